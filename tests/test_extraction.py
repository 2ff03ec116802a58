"""Extraction (difflens.extract) on a tiny untrained shapes model and a 40-image shapes world, on the CPU.

The world, the model and one reference extraction are built once per test session (``tiny_world``,
``extracted``) and shared with tests/test_features.py.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from difflens.data.common import Dataset
from difflens.extract.activations import extract_activations
from difflens.extract.capture import capture_rows
from difflens.extract.dataset import extract_dataset
from difflens.extract.layout import activation_path, latents_path
from difflens.extract.noise import noise_seed, sample_noise
from difflens.models.batching import HalvingBatcher
from difflens.extract.prompts import format_prompt
from difflens.extract.store import FeatureStore

LAYERS = ["down_blocks.1", "mid_block", "up_ft1"]  # an alias among them: files go under the configured name
TIMESTEPS = [25, 500]
N_IMAGES = 40
SETTINGS = dict(layers=LAYERS, timesteps=TIMESTEPS, seed=3, save_maps=True, progress=False, workers=2)


def tiny_world(tmp_path_factory) -> dict:
    """Paths of the session's tiny shapes model and 40-image data set (built on first use)."""
    root = tmp_path_factory.getbasetemp() / "extraction_world"
    paths = {"model": root / "model", "data": root / "data" / "shapes"}
    if not (paths["data"] / "dataset.json").is_file():
        from difflens.data.shapes import ShapesConfig, generate
        from tiny_pipelines import build_tiny_shapes

        build_tiny_shapes(paths["model"])
        generate(paths["data"], ShapesConfig(n_images=N_IMAGES), progress=False)
    return paths


@functools.lru_cache(maxsize=None)
def load_tiny(model_dir: str):
    from difflens.models import load_model

    torch.set_num_threads(1)
    return load_model("shapes", model_dir, dtype="float32", device="cpu")


def extracted(tmp_path_factory) -> Path:
    """Results folder of the reference extraction: 3 shards (16, 16, 8 images), batches of 8, maps saved."""
    world = tiny_world(tmp_path_factory)
    results = tmp_path_factory.getbasetemp() / "extraction_results"
    if not (results / "latents" / "tiny" / "shapes" / "skipped.csv").is_file():
        extract_dataset(load_tiny(str(world["model"])), Dataset.load(world["data"]), results, "tiny", shard_size=16,
                        batch_size=8, **SETTINGS)
    return results


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.fixture(scope="module")
def model(world):
    return load_tiny(str(world["model"]))


@pytest.fixture(scope="module")
def dataset(world):
    return Dataset.load(world["data"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return extracted(tmp_path_factory)


def all_arrays(results: Path) -> dict[str, np.ndarray]:
    """Every (t, layer) pooled and map array and the latents, concatenated over shards, with the row columns."""
    store = FeatureStore(results)
    out = {}
    for t in TIMESTEPS:
        for layer in LAYERS:
            p = store.pooled("tiny", "shapes", layer, t, valid_only=False)
            out[f"ids/{t}/{layer}"] = p.sample_id
            out[f"pooled/{t}/{layer}"] = p.x
            out[f"maps/{t}/{layer}"] = np.concatenate([b.x for b in store.iter_maps("tiny", "shapes", layer, t,
                                                                                    valid_only=False)])
    out["latents"] = np.concatenate([b.x for b in store.iter_latents("tiny", "shapes", valid_only=False)])
    return out


def assert_same(got: np.ndarray, want: np.ndarray, exact: bool, key: str = "") -> None:
    """Bit-identical, or (when the denoiser saw different batch sizes) equal up to float32 / float16 rounding:
    CPU kernels block over the batch dimension, so a row's last bits may depend on how many rows ran with it."""
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=key)
    elif key.startswith("maps"):  # stored as float16: one rounding step apart at most
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4, err_msg=key)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=key)


# ---- noise and prompts --------------------------------------------------------------------------------------------
def test_noise_depends_only_on_id_timestep_draw():
    together = sample_noise((2, 3), 0, ["a", "b", "c"], 25, 0)
    torch.testing.assert_close(sample_noise((2, 3), 0, ["c"], 25, 0)[0], together[2], rtol=0, atol=0)
    torch.testing.assert_close(sample_noise((2, 3), 0, ["b", "a"], 25, 0), together[[1, 0]], rtol=0, atol=0)
    seeds = {noise_seed(0, "a", 25, 0), noise_seed(1, "a", 25, 0), noise_seed(0, "a", 26, 0),
             noise_seed(0, "a", 25, 1), noise_seed(0, "b", 25, 0)}
    assert len(seeds) == 5


def test_format_prompt():
    assert format_prompt("", "red circle") == ""
    assert format_prompt("a photo of a {label}", "red circle") == "a photo of a red circle"


# ---- determinism, layout ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shard_size,batch_size,exact", [(8, 8, True), (40, 40, False)])
def test_two_shardings_give_identical_arrays(tmp_path, model, dataset, reference, shard_size, batch_size, exact):
    """5 shards of 8 vs the reference's 3 shards of 16 / 16 / 8 with the same batches: bit-identical; one shard
    in one batch of 40: the same up to rounding."""
    extract_dataset(model, dataset, tmp_path, "tiny", shard_size=shard_size, batch_size=batch_size, **SETTINGS)
    got, want = all_arrays(tmp_path), all_arrays(reference)
    assert sorted(got) == sorted(want)
    for key in got:
        assert_same(got[key], want[key], exact or key.startswith(("ids", "latents")), key)
    assert got["pooled/25/mid_block"].shape == (N_IMAGES, 32)
    assert list(got["ids/25/mid_block"]) == list(dataset.samples["sample_id"])
    assert not np.isnan(got["pooled/500/up_ft1"]).any()


def test_layout_and_attributes(reference, dataset):
    for k, rows in enumerate([range(0, 16), range(16, 32), range(32, 40)]):
        assert latents_path(reference, "tiny", "shapes", k).is_file()
        path = activation_path(reference, "tiny", "shapes", 500, "up_ft1", k)
        with h5py.File(path, "r") as f:
            assert f["pooled"].dtype == np.float32 and f["maps"].dtype == np.float16
            assert f["maps"].chunks == (1, *f["maps"].shape[1:]) and f["maps"].compression is None  # the default
            assert list(f["sample_id"].asstr()[...]) == list(dataset.samples["sample_id"].iloc[rows])
            np.testing.assert_array_equal(f["label"][...], dataset.samples["label"].iloc[rows])
            a = dict(f.attrs)
        assert (a["model"], a["layer"], a["module"], a["timestep"], a["shard"], a["row_offset"]) == \
            ("tiny", "up_ft1", "up_blocks.1", 500, k, rows.start)
        assert a["prompt"] == "" and a["seed"] == 3 and a["noise_draws"] == 1 and "torch" in a["versions"]
    assert not list(reference.rglob(".*tmp*"))
    assert pd.read_csv(reference / "latents" / "tiny" / "shapes" / "skipped.csv").empty


def test_attribute_columns_travel_with_every_row_table(reference, dataset):
    """The data set's attribute columns are in every latents and activation file, and the store's row table lines
    up with the pooled features (same rows, same order) and with samples.csv."""
    assert dataset.attributes and "axis" in dataset.attributes
    for path in [latents_path(reference, "tiny", "shapes", 2), activation_path(reference, "tiny", "shapes", 25,
                                                                               "mid_block", 2)]:
        with h5py.File(path, "r") as f:
            assert sorted(f["attributes"]) == sorted(dataset.attributes)
            np.testing.assert_array_equal(f["attributes/has_red"][...], dataset.samples["has_red"].iloc[32:40])
            assert list(f["attributes/axis"].asstr()[...]) == list(dataset.samples["axis"].iloc[32:40])
    store = FeatureStore(reference)
    rows = store.rows("tiny", "shapes", "mid_block", 25, split="train")
    pooled = store.pooled("tiny", "shapes", "mid_block", 25, split="train")
    assert list(rows["sample_id"]) == list(pooled.sample_id)
    expected = dataset.samples[dataset.samples["split"] == "train"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[["sample_id", "label", *dataset.attributes]],
                                  expected[["sample_id", "label", *dataset.attributes]], check_dtype=False)


def test_one_stopped_pass_per_batch(tmp_path, model, dataset, monkeypatch):
    """All layers and both timesteps of a batch come from one denoiser call that never reaches up_blocks.2."""
    calls, deeper = [], []
    capture = model.capture
    monkeypatch.setattr(model, "capture", lambda x_t, *a, **k: calls.append(len(x_t)) or capture(x_t, *a, **k))
    handle = model.unet.up_blocks[2].register_forward_hook(lambda *a: deeper.append(1))
    try:
        extract_dataset(model, dataset, tmp_path, "tiny", shard_size=40, batch_size=40,
                        **{**SETTINGS, "timesteps": [25]}, noise_draws=2)
    finally:
        handle.remove()
    assert calls == [N_IMAGES * 2]  # 40 images x 1 timestep x 2 draws in one pass
    assert deeper == []


def test_noise_draws_are_averaged(model, dataset):
    ids = list(dataset.samples["sample_id"][:3])
    x0 = torch.randn(3, 12, 16, 16)
    cond = model.encode_text([""] * 3)
    got = capture_rows(model, x0, ids, cond, [100], 2, ["mid_block"], 5, True)["mid_block"]
    maps = []
    for d in range(2):
        x_t = model.add_noise(x0, sample_noise((12, 16, 16), 5, ids, 100, d), torch.full((3,), 100))
        maps.append(model.capture(x_t, 100, cond, ["mid_block"])["mid_block"].float())
    want = torch.stack(maps).mean(0)
    torch.testing.assert_close(got[0][0], want.mean((-2, -1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1][0].float(), want, rtol=1e-3, atol=1e-3)


def test_prompt_template_conditions_the_denoiser(tmp_path, model, dataset, reference):
    lat = latents_path(reference, "tiny", "shapes", 2)
    outs = {(25, "mid_block"): tmp_path / "a.h5"}
    extract_activations(model, lat, outs, seed=3, prompt="a {label}", progress=False)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["prompt"] == "a {label}"
        prompted = f["pooled"][...]
    with h5py.File(activation_path(reference, "tiny", "shapes", 25, "mid_block", 2), "r") as f:
        plain = f["pooled"][...]
    assert prompted.shape == plain.shape and not np.allclose(prompted, plain)


# ---- robustness ---------------------------------------------------------------------------------------------------
def test_resume_rewrites_only_missing_shards(tmp_path, model, dataset, reference):
    """One activation file of shard 1 is gone: that shard's job runs again (every timestep and layer: one job per
    shard), and nothing else is touched."""
    results = tmp_path / "results"
    shutil.copytree(reference, results)
    gone = activation_path(results, "tiny", "shapes", 500, "mid_block", 1)
    before = {p: p.stat().st_mtime_ns for p in results.rglob("shard-*.h5") if p != gone}
    gone.unlink()
    gone.with_name(f".{gone.name}.tmp-12345").write_bytes(b"left over by a killed job")
    written = extract_dataset(model, dataset, results, "tiny", shard_size=16, batch_size=8, **SETTINGS)
    assert written["latents"] == []
    assert sorted(written["activations"]) == sorted(activation_path(results, "tiny", "shapes", t, layer, 1)
                                                    for t in TIMESTEPS for layer in LAYERS)
    assert all(p.stat().st_mtime_ns == m for p, m in before.items() if p not in written["activations"])
    fresh, old = all_arrays(results), all_arrays(reference)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], old[key], err_msg=key)


@pytest.mark.parametrize("where", ["capture_rows", "_write_batch"])
def test_failed_job_leaves_no_output(tmp_path, model, reference, monkeypatch, where):
    """A failure in the denoiser, or in the background writer thread, fails the job and leaves no file."""
    import difflens.extract.activations as ex

    def boom(*a, **k):
        raise ValueError("killed")

    monkeypatch.setattr(ex, where, boom)
    outs = {(25, layer): tmp_path / f"{layer}.h5" for layer in LAYERS}
    with pytest.raises(ValueError, match="killed"):
        extract_activations(model, latents_path(reference, "tiny", "shapes", 0), outs, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_images_are_skipped_without_shifting_rows(tmp_path, model, reference, world):
    """Image 20 (in shard 1) and all of shard 2 (rows 32..39) unreadable: their rows stay, NaN and invalid."""
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    ds = Dataset.load(data)
    bad_rows = [20, *range(32, 40)]
    bad = list(ds.samples["sample_id"].iloc[bad_rows])
    for sid in bad:
        ds.image_path(sid).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    results = tmp_path / "results"
    extract_dataset(model, ds, results, "tiny", shard_size=16, batch_size=8, **SETTINGS)
    skipped = pd.read_csv(results / "latents" / "tiny" / "shapes" / "skipped.csv")
    assert list(skipped["sample_id"]) == bad
    assert all(f"sample {sid!r}: cannot read image" in why for sid, why in zip(bad, skipped["reason"]))
    store = FeatureStore(results)
    assert list(store.skipped("tiny", "shapes")["sample_id"]) == bad
    got, want = all_arrays(results), all_arrays(reference)
    keep = ~np.isin(np.arange(N_IMAGES), bad_rows)
    for key in got:
        assert got[key].shape == want[key].shape, key
        if key.startswith("ids"):
            np.testing.assert_array_equal(got[key], want[key])
            continue
        assert np.isnan(got[key][bad_rows].astype(np.float32)).all(), key
        # shard 1's batches now hold other rows: equal up to rounding
        assert_same(got[key][keep], want[key][keep], key == "latents", key)
    valid = store.pooled("tiny", "shapes", "mid_block", 25)
    assert len(valid) == keep.sum() and not set(bad) & set(valid.sample_id)


def test_out_of_memory_halves_the_batch(tmp_path, model, dataset, reference, monkeypatch):
    capture = model.capture

    def small_gpu(x_t, *a, **k):
        if len(x_t) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return capture(x_t, *a, **k)

    monkeypatch.setattr(model, "capture", small_gpu)
    outs = {(t, layer): tmp_path / f"{t}-{layer}.h5" for t in TIMESTEPS for layer in LAYERS}
    summary = extract_activations(model, latents_path(reference, "tiny", "shapes", 0), outs, seed=3,
                                  batch_size=16, progress=False)
    assert summary["final_batch_size"] == 4  # 16 images x 2 timesteps rows -> 8 -> 4 images (8 rows) fit
    for (t, layer), path in outs.items():
        with h5py.File(path, "r") as f, \
                h5py.File(activation_path(reference, "tiny", "shapes", t, layer, 0), "r") as g:
            assert_same(f["pooled"][...], g["pooled"][...], False, path.name)


def test_halving_batcher_gives_up_on_single_items_and_other_errors():
    def fn(a, b):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError, match=r"a single images \(extraction.batch_size backed off to 1\)"):
        HalvingBatcher(4, "images", "extraction.batch_size").run(3, fn)
    with pytest.raises(RuntimeError, match="shape"):
        HalvingBatcher(4).run(3, lambda a, b: (_ for _ in ()).throw(RuntimeError("bad shape")))
    assert HalvingBatcher(4).run(10, lambda a, b: (a, b)) == [(0, 4), (4, 8), (8, 10)]


def test_latents_match_the_model_encoding(model, dataset, reference):
    sid = dataset.samples["sample_id"].iloc[17]
    with h5py.File(latents_path(reference, "tiny", "shapes", 1), "r") as f:  # shard 1: rows 16..31
        assert list(f["sample_id"].asstr()) == list(dataset.samples["sample_id"].iloc[16:32])
        assert f["sample_id"].asstr()[1] == sid and bool(f["valid"][:].all())
        stored = torch.from_numpy(f["latents"][1])
    want = model.encode_images(model.preprocess([dataset.load_image(sid)]))[0]
    torch.testing.assert_close(stored, want)
