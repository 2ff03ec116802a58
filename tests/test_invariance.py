"""Results must not depend on how the work is cut into shards, shard jobs or batches, and an image that cannot be read
must be carried through every later stage.

Which sizes must not matter, and which legitimately do:

* extraction ``shard_size``: a shard is a file, not a unit of arithmetic; with the same denoiser batches (a batch
  size that divides both shard sizes) every stored array is bit-identical (tests/test_extraction.py), so everything
  read from it must be too: SAE weights, Diff-C weights and accuracies, linear probes (exact here).
* ``sae.batch_size`` and ``classify.batch_size`` are the optimisers' batches: they change training, legitimately.
  The batch of a trained model's *reading* must not matter: ``image_scores``' encoder batch (SAE analysis) and
  Diff-C's evaluation batch (val selection and the test read; the settings tie it to the training batch, so the
  test calls the evaluation with other sizes).
* ``infodecomp.batch_size`` (denoiser rows per call) and ``infodecomp.localize.n_shards`` must not matter:
  localization maps and IoU, intervention change and predictor maps, the ODE path.

Exact where the arithmetic is the same (the shard-size and shard-count tests). Where only the batch differs, CPU
float32 kernels (matmul, convolution) block over the batch dimension, so a row's last bits can depend on how many
rows ran with it (a few float32 ulps, about 1e-7 relative, per layer); each test states its tolerance, well below any
real difference (a row given another image's noise or prompt changes the result by the order of its own scale).

Skipped rows (``test_a_corrupt_image_*``): extraction keeps an unreadable image's row, invalid, with its reason in
``skipped.csv``; every later stage reads rows through ``FeatureStore``, which leaves invalid rows out; the
information stage, which reads images itself, leaves them out with a warning naming each.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from difflens import resources as resources_lib
from difflens.classify import diffc
from difflens.classify.diffc import DiffC, DiffCSettings, HeadSources, train_diffc_heads
from difflens.classify.sources import CachedMaps, OnTheFlyMaps, TargetError, choose_mode, head_name
from difflens.classify.tables import probe_rows
from difflens.config import load_config
from difflens.data.common import Dataset, DatasetError
from difflens.extract.dataset import extract_dataset
from difflens.extract.layout import latents_path
from difflens.extract.store import FeatureStore, read_rows, target_columns, write_index
from difflens.info.estimators import LogSNRSampler
from difflens.info.inputs import encode_samples, word_rows
from difflens.info.intervene import change_maps, edits_of, ode_path, word_maps
from difflens.info.localize import compute_maps, evaluate_curves, ground_truth, row_curves, threshold_grid
from difflens.info.localize_shards import (MAP_KEYS, curves_of, join_shards, localize_rows, localize_shard,
                                           planned_shard, shard_plan)
from difflens.models.sampling import sampling_timesteps
from difflens.sae.analysis import attribute_auroc, image_scores, indicator_columns, latent_table, live_latents
from difflens.sae.data import load_vectors
from difflens.sae.model import SAEConfig
from difflens.sae.train import SAETrainSettings, train_sae
from test_extraction import SETTINGS, extracted, load_tiny, tiny_world

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny"
SAE_KEY = ("up_ft1", 500)  # (layer, timestep) the SAE and Diff-C tests read
DIFFC = DiffCSettings(epochs=2, lr=3e-3, width=8, batch_size=8, seed=0)
SAMPLER = LogSNRSampler(0, 2, 3)  # inside the shipped shapes model's trained log-SNR range
INFO = dict(n_draws=2, sampler=SAMPLER, seed=0)
LOCALIZE = {"split": "test", "calibration_split": "val", "max_images": 2}
N_THRESHOLDS = 12
SWAPS = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "circle": "square", "square": "triangle",
         "triangle": "circle"}

#: one xdist worker (make test) builds this module's extractions and loads the shapes model once
pytestmark = [pytest.mark.usefixtures("two_threads"), pytest.mark.xdist_group("invariance")]


# ---- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(world):
    return Dataset.load(world["data"])


@pytest.fixture(scope="module")
def tiny(world):
    return load_tiny(str(world["model"]))


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny, dataset):
    """{shard size: FeatureStore}: the session's reference extraction (shards of 16) and the same images in shards
    of 8, both in denoiser batches of 8."""
    resharded = tmp_path_factory.mktemp("resharded")
    extract_dataset(tiny, dataset, resharded, MODEL, shard_size=8, batch_size=8, **SETTINGS)
    return {16: FeatureStore(extracted(tmp_path_factory)), 8: FeatureStore(resharded)}


@pytest.fixture(scope="module")
def shapes_model():
    """The shipped shapes model: the information stage needs a trained text-conditioned denoiser."""
    from difflens.models import load_model

    return load_model("shapes", str(ROOT / "resources" / "shapes_model"), device="cpu")


def assert_identical(a, b, where: str = "", ignore: tuple[str, ...] = ()) -> None:
    """``a`` and ``b`` equal bit for bit: tensors and arrays exactly, dicts and lists item by item, dict keys in
    ``ignore`` (wall-clock times) left out at any depth; the failure names the path to the first difference."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            if k not in ignore:
                assert_identical(a[k], b[k], f"{where}/{k}", ignore)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]", ignore)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def assert_close_to_scale(got: np.ndarray, want: np.ndarray, share: float, what: str) -> None:
    """``got`` equals ``want`` up to ``share`` of ``want``'s largest magnitude, everywhere: rounding in a
    difference of two denoiser outputs scales with the outputs, not with the (possibly near-zero) difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=0, atol=share * float(np.abs(want).max()), err_msg=what)


# ---- SAE ----------------------------------------------------------------------------------------------------------
def sae_run(store: FeatureStore, input: str):
    """(trained SAE, loss curve, train vectors, row table, positions per image): 30 seeded steps of a 64-latent
    k = 4 SAE on the train split of ``SAE_KEY`` (spatial: 4 seeded positions per image)."""
    layer, t = SAE_KEY
    x, rows, per_image = load_vectors(store, MODEL, "shapes", layer, t, input=input, split="train",
                                      positions=4 if input == "spatial" else None, seed=0)
    settings = SAETrainSettings(steps=30, batch_size=32, dead_steps=5, seed=0)
    sae, curve = train_sae(x, SAEConfig(d=x.shape[1], n_latents=64, k=4), settings, device="cpu", progress=False)
    return sae, curve, x, rows, per_image


@pytest.mark.parametrize("input", ["pooled", "spatial"])
def test_sae_weights_do_not_depend_on_the_shard_size(stores, input):
    """Vectors and SAE weights (and loss curve) from shards of 16 and of 8: bit-identical."""
    (sae_a, curve_a, x_a, rows_a, _), (sae_b, curve_b, x_b, rows_b, _) = (sae_run(stores[s], input) for s in (16, 8))
    assert torch.equal(x_a, x_b) and list(rows_a["sample_id"]) == list(rows_b["sample_id"])
    assert_identical(sae_a.state_dict(), sae_b.state_dict(), "state_dict")
    assert curve_a == curve_b


@pytest.mark.parametrize("input", ["pooled", "spatial"])
def test_sae_analysis_does_not_depend_on_the_encoding_batch(stores, input):
    """``image_scores`` in encoder batches of the default size, of 7 (ending inside an image when an image is every
    map position) and of 1: scores equal to 1e-5 of their largest (a d = 32 float32 dot product rounds differently
    in another GEMM blocking: measured 3.4e-7 of it); the same latents fire on every image, and the latent table
    (live latents, top images, purity, best attribute, AUROC) is the same."""
    sae = sae_run(stores[16], input)[0]
    layer, t = SAE_KEY
    x, rows, per_image = load_vectors(stores[16], MODEL, "shapes", layer, t, input=input, split="train")
    names, indicators = indicator_columns(rows, target_columns(rows.columns))

    def table_of(scores: np.ndarray) -> pd.DataFrame:
        return latent_table(scores, rows["label"].to_numpy(), names,
                            attribute_auroc(scores, indicators, live_latents(scores)), top=5)

    reference = image_scores(sae, x, positions=per_image).numpy()
    for batch in (7, 1):
        scores = image_scores(sae, x, positions=per_image, batch_size=batch).numpy()
        assert_close_to_scale(scores, reference, 1e-5, f"scores, batch {batch}")
        np.testing.assert_array_equal(scores > 0, reference > 0)
        table, want = table_of(scores), table_of(reference)
        pd.testing.assert_frame_equal(table, want, check_exact=False, rtol=1e-5)
        assert list(table["top_images"]) == list(want["top_images"])


# ---- Diff-C and probes --------------------------------------------------------------------------------------------
def diffc_source(store: FeatureStore, mode: str, tiny):
    """The pipeline's multi-head source of ``SAE_KEY`` (target colour, crop augmentation): cached maps as
    train_diffc.py wraps them, or the denoiser on the fly with ``keys``."""
    layer, t = SAE_KEY
    kw = dict(target="colour", seed=SETTINGS["seed"], augment=("crop",))
    if mode == "cached":
        return HeadSources({head_name(t, layer): CachedMaps(store, MODEL, "shapes", layer, t, **kw)})
    return OnTheFlyMaps(store, tiny, MODEL, "shapes", layer, t, keys=[(t, layer)], **kw)


def n_classes_of(source) -> int:
    return (next(iter(source.sources.values())) if isinstance(source, HeadSources) else source).n_classes


@pytest.mark.parametrize("mode", ["cached", "on_the_fly"])
def test_diffc_does_not_depend_on_the_shard_size(stores, tiny, tmp_path, mode):
    """Two epochs of Diff-C on the extraction in shards of 16 and of 8: the same result (accuracies, best epoch,
    curves, rows) and the same saved state (best and last weights, optimiser, random streams), bit for bit."""
    results, states = [], []
    for size in (16, 8):
        source = diffc_source(stores[size], mode, tiny)
        work = tmp_path / f"shards-{size}"
        result = train_diffc_heads(source, n_classes_of(source), DIFFC, work_dir=work, device="cpu", progress=False)
        results.append(result)
        states.append(torch.load(work / diffc.CHECKPOINT, weights_only=True))
    assert_identical(results[0], results[1], "result", ignore=("seconds",))
    assert_identical(states[0], states[1], "checkpoint", ignore=("seconds",))


@pytest.mark.parametrize("mode", ["cached", "on_the_fly"])
def test_diffc_evaluation_does_not_depend_on_its_batch(stores, tiny, tmp_path, mode):
    """The trained head read on val and test (``diffc._accuracies``, the selection and the test read) in batches
    of 1, 3 and 64: the same accuracies, the same predicted class for every row, logits equal to 1e-5 of their
    largest. Eval mode: BatchNorm uses its running statistics and dropout is off, so a row's logits are its own;
    only rounding differs (measured below 1e-6 of the largest; on the fly the denoiser's maps, made in the
    evaluation's batches, round too)."""
    source = diffc_source(stores[16], mode, tiny)
    n_classes = n_classes_of(source)
    (name, shape), = source.shapes.items()
    train_diffc_heads(source, n_classes, DIFFC, work_dir=tmp_path, device="cpu", progress=False)
    best = torch.load(tmp_path / diffc.CHECKPOINT, weights_only=True)["heads"][name]["best"]
    model = DiffC(shape[0], n_classes, DIFFC.width, DIFFC.dropout)
    model.load_state_dict(best)
    head = SimpleNamespace(name=name, model=model)
    for split in ("val", "test"):
        accuracy, logits = {}, {}
        for batch in (1, 3, 64):
            accuracy[batch] = diffc._accuracies([head], source, split, batch, torch.device("cpu"), n_classes)
            with torch.no_grad():
                logits[batch] = torch.cat([model(maps[name]) for maps, _ in source.batches(split, batch, epoch=0,
                                                                                          train=False)])
        assert accuracy[1] == accuracy[3] == accuracy[64], (split, accuracy)
        for batch in (1, 3):
            assert_close_to_scale(logits[batch].numpy(), logits[64].numpy(), 1e-5, f"{split} logits, batch {batch}")
            assert torch.equal(logits[batch].argmax(1), logits[64].argmax(1))


def test_probes_do_not_depend_on_the_shard_size(stores):
    """Linear probes of every target on two (timestep, layer) pairs: the same table (seconds aside), exactly."""
    entries = [(25, "mid_block"), SAE_KEY[::-1]]
    tables = [probe_rows(stores[s], MODEL, "shapes", entries, [], progress=False).drop(columns="seconds")
              for s in (16, 8)]
    assert len(tables[0]) >= 2 * 4
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


# ---- classify.mode: auto --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mapless(tmp_path_factory, tiny, dataset):
    """An extraction of one layer at one timestep without maps (extraction.save_maps: false)."""
    results = tmp_path_factory.mktemp("mapless")
    extract_dataset(tiny, dataset, results, MODEL, **{**SETTINGS, "layers": ["mid_block"], "timesteps": [25],
                                                      "save_maps": False}, shard_size=16, batch_size=8)
    return results


def index_entries(results: Path, tmp_path: Path) -> list[dict]:
    """The extraction index (index_activations' write_index) of every activation file under ``results``."""
    files = sorted((results / "activations").rglob("shard-*.h5"))
    return write_index(files, tmp_path / f"{results.name}-index.json")["entries"]


def test_auto_mode_takes_saved_maps_that_fit_and_else_runs_the_denoiser(stores, mapless, tmp_path):
    """The demo's config (classify.mode auto, its cache_limit_gb): the reference extraction's saved maps -> cached;
    an extraction without maps -> on the fly; saved maps too large for the limit (the same entry at 2 x the limit)
    -> on the fly. The memory request (rules/common.smk, diffc_mem: cached when resources.cached_maps_mb > 0 for
    every entry) agrees in each case."""
    cl = load_config(ROOT / "config.yaml")["classify"]
    assert cl["mode"] == "auto"
    limit = cl["cache_limit_gb"]
    saved = index_entries(stores[16].results, tmp_path)
    assert saved and all(e["maps"] for e in saved)
    for e in saved:
        assert choose_mode("auto", e, limit) == "cached" and resources_lib.cached_maps_mb(e, limit) > 0
    (not_saved,) = index_entries(mapless, tmp_path)
    assert not not_saved["maps"]
    assert choose_mode("auto", not_saved, limit) == "on_the_fly" and resources_lib.cached_maps_mb(not_saved, limit) == 0
    e = saved[0]
    too_large = {**e, "n_valid": int(2 * limit * 2 ** 30 / (2 * resources_lib.map_values(e))) + 1}
    assert choose_mode("auto", too_large, limit) == "on_the_fly"
    assert resources_lib.cached_maps_mb(too_large, limit) == 0
    # at 0.9 x the limit the maps fit, but not with the quarter to spare that CachedMaps keeps them in memory by:
    # auto, the job's memory request and CachedMaps agree on reading them on the fly
    near = {**e, "n_valid": int(0.9 * limit * 2 ** 30 / (2 * resources_lib.map_values(e)))}
    assert choose_mode("auto", near, limit) == "on_the_fly" and resources_lib.cached_maps_mb(near, limit) == 0
    # the explicit modes are taken as they are, or refused naming the layer
    assert choose_mode("on_the_fly", e, limit) == "on_the_fly" and choose_mode("cached", too_large, limit) == "cached"
    with pytest.raises(TargetError, match=r"maps of mid_block at t25 were not saved"):
        choose_mode("cached", not_saved, limit)
    with pytest.raises(TargetError, match=r"classify.mode 'cache' is not one of"):
        choose_mode("cache", e, limit)


# ---- localization -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def localize_world(dataset):
    return dataset, localize_rows(dataset, LOCALIZE)


def test_localization_does_not_depend_on_the_denoiser_batch(shapes_model, localize_world):
    """Maps of the same word rows in denoiser batches of 64 (every prompt and draw of an image in one call) and of
    3: equal to 1e-4 of each map kind's largest value (measured up to 8e-6: i^o is a squared difference of two
    predictions, so its rounding scales with the predictions). The IoU curves threshold min-max normalised maps, so
    a pixel within rounding of a threshold may fall on the other side (measured: one attention pixel once); a pixel
    more or less moves a row's IoU by at most 1 / (its mask's pixels): curves within two such pixels, and at most 2%
    of the (row, threshold) entries differing at all."""
    ds, rows = localize_world
    thresholds = threshold_grid(N_THRESHOLDS)
    masks = ground_truth(ds, rows, shapes_model.resolution)
    maps, curves = {}, {}
    for batch in (64, 3):
        maps[batch] = compute_maps(shapes_model, ds, rows, batch_size=batch, progress=False, **INFO)
        curves[batch] = row_curves(maps[batch], lambda a, b: masks[a:b], shapes_model.resolution, thresholds)
    for key in MAP_KEYS:
        assert_close_to_scale(maps[3][key], maps[64][key], 1e-4, key)
    pixel = 1 / masks.reshape(len(masks), -1).sum(1)[:, None]  # the IoU step of one pixel, per row
    assert sorted(curves[3][0]) == sorted(curves[64][0])
    for method in curves[64][0]:  # every method, on our grid and on the paper's
        got, want = curves[3][0][method], curves[64][0][method]
        assert (np.abs(got - want) <= 2 * pixel).all(), method
        assert (got != want).mean() <= 0.02, method
    np.testing.assert_array_equal(curves[3][1], curves[64][1])


class OutOfMemoryAbove:
    """A loaded model whose denoiser calls (``denoise``, ``capture``) of more than ``limit`` rows run out of memory
    after the forward pass, as a GPU would part-way through: the cross-attention it recorded must be undone."""

    def __init__(self, model, limit: int):
        self.model, self.limit, self.calls = model, limit, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def _checked(self, fn, x_t, *args):
        out = fn(x_t, *args)
        self.calls.append(len(x_t))
        if len(x_t) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory ({len(x_t)} rows)")
        return out

    def denoise(self, x_t, t, cond):
        return self._checked(self.model.denoise, x_t, t, cond)

    def capture(self, x_t, t, cond, layers, stop_early=True):
        return self._checked(self.model.capture, x_t, t, cond, layers, stop_early)


def test_localization_out_of_memory_backs_off_the_batch_with_the_same_maps(shapes_model, localize_world,
                                                                           monkeypatch, caplog):
    """Batches of 64 rows where more than 7 run out of memory: halved until they fit and retried, with maps
    (attention included) equal to those of batches that fit, to the batch test's tolerance; later images start at
    the backed-off size."""
    from difflens.info import estimators

    monkeypatch.setattr(estimators, "_BACKED_OFF", {})
    ds, rows = localize_world
    rows = rows.head(4)
    small = OutOfMemoryAbove(shapes_model, 7)
    got = compute_maps(small, ds, rows, batch_size=64, progress=False, **INFO)
    want = compute_maps(shapes_model, ds, rows, batch_size=64, progress=False, **INFO)
    for key in MAP_KEYS:
        assert_close_to_scale(got[key], want[key], 1e-4, key)
    backed_off = estimators._BACKED_OFF[64]
    assert 1 <= backed_off <= 7 and max(small.calls[-3:]) <= 7  # later images start at the backed-off size
    assert f"continuing with {backed_off} (set infodecomp.batch_size: {backed_off} to start there)" in caplog.text


def test_diffc_on_the_fly_backs_off_its_denoiser_batch_and_names_the_key_when_training_runs_out(
        stores, tiny, monkeypatch):
    """Diff-C's on-the-fly maps of a batch of 12 images where more than 5 rows run out of memory: the same maps in
    smaller passes, to 1e-3 of the largest (the maps are float16: a float32 rounding of another batch can move one to
    the next float16 value, 2^-11 relative). Out of memory in the training step: one error naming
    classify.batch_size."""
    layer, t = SAE_KEY
    idx = np.arange(12)
    want = diffc_source(stores[16], "on_the_fly", tiny)._maps("train", idx, None)
    got = diffc_source(stores[16], "on_the_fly", OutOfMemoryAbove(tiny, 5))._maps("train", idx, None)
    for head, maps in want.items():
        assert_close_to_scale(got[head].numpy(), maps.numpy(), 1e-3, head)

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(diffc, "_train_epoch_heads", no_room)
    source = diffc_source(stores[16], "cached", tiny)
    with pytest.raises(torch.OutOfMemoryError, match=rf"lower classify.batch_size \(now {DIFFC.batch_size}\)"):
        train_diffc_heads(source, n_classes_of(source), DIFFC, device="cpu", progress=False)


def localize_in_shards(model, ds, rows, n_shards: int, folder: Path) -> dict[str, np.ndarray]:
    """Every shard of an ``n_shards`` plan localized into ``folder`` and joined."""
    plan = shard_plan(rows, n_shards)
    paths = [folder / f"shard-{k}.npz" for k in range(n_shards)]
    for k, path in enumerate(paths):
        localize_shard(model, ds, planned_shard(rows, k, plan, "plan.json"), path, n_thresholds=N_THRESHOLDS,
                       batch_size=64, progress=False, **INFO)
    return join_shards(paths, rows)


def test_localization_does_not_depend_on_the_number_of_shards(shapes_model, localize_world, tmp_path):
    """One shard job and three: the joined maps and IoU curves, and the mIoU tables, are bit-identical (each image
    is computed the same way whichever shard holds it)."""
    ds, rows = localize_world
    joined = {}
    for n in (1, 3):
        (tmp_path / str(n)).mkdir()
        joined[n] = localize_in_shards(shapes_model, ds, rows, n, tmp_path / str(n))
    assert shard_plan(rows, 3)["n_shards"] == 3 and len(joined[1]["row"]) == len(rows)
    assert_identical(joined[1], joined[3], "joined")
    tables = [evaluate_curves(rows, curves_of(j), j["whole"], calibration_split="val", seed=0,
                              thresholds=j["thresholds"]) for j in (joined[1], joined[3])]
    for a, b in zip(*tables):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


# ---- intervention -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edits(shapes_model, dataset):
    """(edits of the first word of 3 test images, omitted and swapped; sample id -> latents)."""
    rows = word_rows(dataset, ["test"], 3, need_masks=False)
    table = edits_of(rows, SWAPS, 1)
    images = list(dict.fromkeys(table["sample_id"]))
    return table, dict(zip(images, encode_samples(shapes_model, dataset, images)))


def test_intervention_does_not_depend_on_the_denoiser_batch(shapes_model, edits):
    """Change maps (4 Heun steps each way) with batch 64 (every image inverted in one chunk) and 4 (a chunk of one
    image, its prompts in batches of 4), with the attention traced during the regeneration, and the CMI and
    attention maps with batch 64 and 3: equal to 1e-3 of the largest change (rounding carried along 8 ODE steps and
    squared in the change: measured 2.4e-5), to 1e-4 of the largest regeneration attention (measured 2.5e-6) and of
    the largest predictor value (cmi, cmi_s, attention_itd: measured 5e-6 at most)."""
    table, latents_of = edits
    change = {b: change_maps(shapes_model, latents_of, table, steps=4, solver="heun", batch_size=b, progress=False)
              for b in (64, 4)}
    assert change[64][0].shape[0] == len(table) and change[64][0].max() > 0 and change[64][1].max() > 0
    assert_close_to_scale(change[4][0], change[64][0], 1e-3, "change")
    assert_close_to_scale(change[4][1], change[64][1], 1e-4, "attention_regen")
    predictors = {b: word_maps(shapes_model, latents_of, table, batch_size=b, progress=False, **INFO) for b in (64, 3)}
    assert sorted(predictors[64]) == ["attention_itd", "cmi", "cmi_s"]
    for key in predictors[64]:
        assert_close_to_scale(predictors[3][key], predictors[64][key], 1e-4, key)


def test_ode_path_does_not_depend_on_the_denoiser_batch(shapes_model, edits):
    """Inversion of 3 images along 4 Heun steps in one call and one row per call: equal to 1e-4 of the largest
    latent (measured 2.4e-6)."""
    _, latents_of = edits
    x = torch.stack(list(latents_of.values()))
    grid = sampling_timesteps(shapes_model.num_train_timesteps, 5).flip(0)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    paths = [ode_path(shapes_model, x, prompts, grid, "heun", batch_size=b).numpy() for b in (64, 1)]
    assert_close_to_scale(paths[1], paths[0], 1e-4, "ode path")


# ---- a corrupt image ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corrupt(tmp_path_factory, tiny, world, dataset):
    """The tiny world with two unreadable images (a train image of shard 0 and the first test image localization
    reads), extracted as the reference is: (data set, results folder, {sample id: split} of the corrupt ones)."""
    root = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(world["data"], root / "data")
    ds = Dataset.load(root / "data")
    bad = {ds.samples.loc[ds.samples["split"] == "train", "sample_id"].iloc[2]: "train",
           localize_rows(ds, LOCALIZE).query("split == 'test'")["sample_id"].iloc[0]: "test"}
    for sid in bad:
        ds.image_path(sid).write_bytes(b"not a png")
    extract_dataset(tiny, ds, root / "results", MODEL, shard_size=16, batch_size=8, **SETTINGS)
    return ds, root / "results", bad


def test_a_corrupt_image_is_listed_with_its_reason_and_keeps_its_row(corrupt, tmp_path):
    """skipped.csv names both images and why; the latents and activation files keep their rows, invalid, with NaN
    features; the index counts them among the rows but not among the valid ones."""
    ds, results, bad = corrupt
    skipped = pd.read_csv(results / "latents" / MODEL / "shapes" / "skipped.csv")
    order = [s for s in ds.samples["sample_id"] if s in bad]
    assert list(skipped["sample_id"]) == order
    assert all("cannot read image" in r and sid in r for sid, r in zip(skipped["sample_id"], skipped["reason"]))
    store = FeatureStore(results)
    assert_identical(store.skipped(MODEL, "shapes").to_dict("list"), skipped.to_dict("list"), "skipped")
    with h5py.File(latents_path(results, MODEL, "shapes", 0), "r") as f:
        rows = read_rows(f)
    assert list(rows["sample_id"]) == list(ds.samples["sample_id"].iloc[:16])
    in_shard = {s for s in bad if s in set(rows["sample_id"])}
    assert in_shard and {s for s, v in zip(rows["sample_id"], rows["valid"]) if not v} == in_shard
    layer, t = SAE_KEY
    everything = store.pooled(MODEL, "shapes", layer, t, valid_only=False)
    is_bad = np.isin(everything.sample_id, list(bad))
    assert list(everything.sample_id) == list(ds.samples["sample_id"]) and is_bad.sum() == 2
    assert np.isnan(everything.x[is_bad]).all() and np.isfinite(everything.x[~is_bad]).all()
    for e in index_entries(results, tmp_path):
        assert (e["n_rows"], e["n_valid"]) == (len(ds.samples), len(ds.samples) - 2)


def test_a_corrupt_image_is_left_out_of_every_later_stage(corrupt, stores, tiny):
    """Features, SAE vectors (pooled and spatial), Diff-C's splits (cached and on the fly) and the probes hold
    every other image, in order, and not the corrupt ones; the other images' features are the clean extraction's
    (up to rounding, measured 1e-7: a skipped row changes which images share a denoiser batch), so no row slid onto
    another image."""
    ds, results, bad = corrupt
    store, clean = FeatureStore(results), stores[16]
    layer, t = SAE_KEY
    kept = ds.samples[~ds.samples["sample_id"].isin(list(bad))]
    rows = store.rows(MODEL, "shapes", layer, t)
    assert list(rows["sample_id"]) == list(kept["sample_id"])
    got = store.pooled(MODEL, "shapes", layer, t)
    want = clean.pooled(MODEL, "shapes", layer, t)
    np.testing.assert_allclose(got.x, want.x[np.isin(want.sample_id, got.sample_id)], rtol=1e-4, atol=1e-5)
    for input in ("pooled", "spatial"):
        x, vector_rows, per_image = load_vectors(store, MODEL, "shapes", layer, t, input=input, split="train")
        assert list(vector_rows["sample_id"]) == list(kept.loc[kept["split"] == "train", "sample_id"])
        assert len(x) == len(vector_rows) * per_image and bool(torch.isfinite(x).all())
    for mode in ("cached", "on_the_fly"):
        source = diffc_source(store, mode, tiny)
        split_source = next(iter(source.sources.values())) if isinstance(source, HeadSources) else source
        for split in ("train", "val", "test"):
            ids = list(split_source.rows[split]["sample_id"])
            assert not set(ids) & set(bad)
            assert ids == list(kept.loc[kept["split"] == split, "sample_id"]), (mode, split)
            assert source.n(split) == (kept["split"] == split).sum()
    probes = probe_rows(store, MODEL, "shapes", [(t, layer)], ["label"], progress=False)
    assert probes["n_train"].tolist() == [int((kept["split"] == "train").sum())]


def test_a_corrupt_image_is_left_out_of_the_information_stage_naming_it(corrupt, shapes_model, caplog):
    """The information stage reads images itself (info.inputs.encode_samples), not the extraction's latents: its jobs
    find the unreadable ones first (``unreadable_images``; the localization plan stores them for its shards and the
    collecting job) and leave their rows out with a warning naming the sample and its file, instead of stopping on
    the first one or dropping it unreported. The rows left compute as before."""
    import logging

    from difflens.info.inputs import drop_unreadable, unreadable_images

    ds, _, bad = corrupt
    (sid,) = [s for s, split in bad.items() if split == "test"]
    rows = localize_rows(ds, LOCALIZE)
    assert sid in set(rows["sample_id"])
    with pytest.raises(DatasetError, match=rf"sample '{sid}': cannot read image .*{sid}"):
        compute_maps(shapes_model, ds, rows[rows["sample_id"] == sid], batch_size=64, progress=False, **INFO)
    skipped = unreadable_images(ds, rows["sample_id"])
    assert list(skipped) == [sid] and f"cannot read image" in skipped[sid]
    with caplog.at_level(logging.WARNING):
        kept = drop_unreadable(rows, skipped, "localization plan", logging.getLogger("test"))
    assert f"localization plan: sample '{sid}' left out" in caplog.text and sid in caplog.text
    assert sid not in set(kept["sample_id"]) and len(kept) == len(rows) - int((rows["sample_id"] == sid).sum())
    planned = localize_rows(ds, LOCALIZE, skipped)
    assert list(planned["sample_id"]) == list(kept["sample_id"]) and list(planned.index) == list(range(len(kept)))
    other = planned[planned["sample_id"] == planned["sample_id"].iloc[0]]
    compute_maps(shapes_model, ds, other, batch_size=64, progress=False, **INFO)  # the others still compute