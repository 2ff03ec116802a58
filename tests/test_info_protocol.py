"""Kong et al.'s protocol as the authors computed it (issue 26), on the shipped shapes model and the tiny world:
nested draw counts (the first n draws of one run are the n-draw estimate), the public code's strict thresholds and
its oracle grid, DAAM traced while regenerating the DDIM-inverted image (``attention_ddim``), and the intervention's
edits (placeholder or deletion, each (image, caption) inverted under its own caption, a swap edit's CMI map)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from difflens.config import ConfigError, draw_counts, validate_config
from difflens.info import memory
from difflens.info.estimators import LogSNRSampler, score_item
from difflens.info.inputs import encode_samples, word_rows
from difflens.info.intervene import (MASK_BASELINES, PREDICTORS, change_maps, edits_of, run_intervention,
                                     word_maps)
from difflens.info.localize import (MAP_METHODS, PAPER_GRID, compute_maps, evaluate_curves, iou_curves, row_curves,
                                    strict_thresholds, threshold_grid, threshold_passes, word_attention)
from difflens.info.localize_shards import MAP_KEYS, map_keys
from difflens.info.ode import regeneration_attention
# the tiny world's data set and the shipped shapes model (module fixtures), the swap table, the tolerance helper
from test_invariance import ROOT, SAMPLER, SWAPS, assert_close_to_scale, dataset, shapes_model, world  # noqa: F401

STRATIFIED = LogSNRSampler(SAMPLER.loc, SAMPLER.scale, SAMPLER.clip, stratified=True)

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def rows(dataset):
    """The word rows (object, colour and relation words) of the first two test images with masks."""
    return word_rows(dataset, ["test"], 2, need_masks=True)


# ---- nested draw counts -------------------------------------------------------------------------------------------
def test_nested_draw_counts_are_the_smaller_runs(shapes_model, dataset, rows):
    """One 8-draw run with counts [4, 8] keeps, besides the 8-draw maps, ``<map>@4`` for every map that depends on the
    draws: equal to a 4-draw run's maps, and the 8-draw maps equal to an 8-draw run's (to 1e-5 of the largest value:
    the runs cut their denoiser batches differently; measured below 2e-7). The draws themselves nest exactly."""
    kw = dict(sampler=SAMPLER, seed=0, batch_size=64, progress=False)
    nested = compute_maps(shapes_model, dataset, rows, n_draws=8, counts=[4, 8], **kw)
    alone = {n: compute_maps(shapes_model, dataset, rows, n_draws=n, **kw) for n in (4, 8)}
    assert sorted(nested) == sorted([*alone[8], "cmi@4", "mi@4", "attention_itd@4"])
    for name in ("cmi", "mi", "attention_itd"):
        assert_close_to_scale(nested[f"{name}@4"], alone[4][name], 1e-5, f"{name}@4")
        assert_close_to_scale(nested[name], alone[8][name], 1e-5, name)
        assert np.abs(alone[4][name] - alone[8][name]).max() > 1e-2 * np.abs(alone[8][name]).max(), name
    for name in ("cmi_s", "cmi_nats", "mi_nats"):
        assert_close_to_scale(nested[name], alone[8][name], 1e-5, name)
    # the maps file and the curves carry the smaller count: maps, then the optional ones in a fixed order
    assert map_keys(nested) == [*MAP_KEYS, "attention_itd", "attention_itd@4", "cmi@4", "mi@4"]
    masks = np.zeros((len(rows), shapes_model.resolution, shapes_model.resolution), bool)
    masks[:, :8] = True
    curves, _ = row_curves(nested, lambda a, b: masks[a:b], shapes_model.resolution, threshold_grid(5))
    drawn = ["mi", "cmi", "attention_itd", "attention+cmi"]
    methods = drawn + [f"{m}@4" for m in drawn]
    assert sorted(curves) == sorted(methods + [f"{m}:paper" for m in methods])
    # a finished row holds three maps and four curve methods (both grids) more per smaller count
    side = memory.latent_side(512) ** 2
    assert memory.row_bytes(512, 50, 2) - memory.row_bytes(512, 50) == 2 * (3 * side * 4 + 4 * (50 + 50) * 8)
    # draws first .. first + n - 1: the continuation of a shorter run
    full = SAMPLER.item_draws(8, (4, 2, 2), 0, "item")
    for got, want in zip(SAMPLER.item_draws(4, (4, 2, 2), 0, "item", first=4), full):
        assert torch.equal(got, want[4:])


def test_stratified_draws_do_not_nest(shapes_model, dataset, rows):
    """Stratified draws depend on the count: continuing them is refused, in the sampler and in the maps, and a
    config that asks for a list of counts with stratified draws is refused naming infodecomp.n_draws."""
    with pytest.raises(ValueError, match="stratified draws do not nest"):
        STRATIFIED.item_draws(4, (4, 2, 2), 0, "item", first=4)
    STRATIFIED.item_draws(4, (4, 2, 2), 0, "item")  # from the first draw: fine
    with pytest.raises(ValueError, match="infodecomp.stratified: false"):
        compute_maps(shapes_model, dataset, rows.head(1), n_draws=4, counts=[2], sampler=STRATIFIED, seed=0,
                     progress=False)
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["infodecomp"].update(n_draws=[8, 4], stratified=True)
    with pytest.raises(ConfigError, match=r"infodecomp\.n_draws = \[8, 4\].*infodecomp\.stratified: false"):
        validate_config(copy.deepcopy(cfg))
    cfg["infodecomp"]["stratified"] = False
    assert draw_counts(validate_config(cfg)["infodecomp"]) == [4, 8]
    assert draw_counts({"n_draws": 24}) == [24]


# ---- the public code's thresholds and oracle ----------------------------------------------------------------------
def test_strict_thresholds_leave_a_value_on_the_threshold_out():
    """A pixel whose normalised value is exactly a threshold is counted with ``>=`` and not with ``>`` (the public
    code's); float32 values next to every paper threshold compare as ``>`` with the float64 threshold."""
    masks = np.zeros((1, 4, 4), bool)
    masks[0, :2] = True
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0], maps[0, 1], maps[0, 2] = 1.0, 0.25, 0.25  # the mask: 1 and 0.25; a halo at 0.25 outside it
    at = np.array([0.25])
    assert iou_curves(maps, masks, at)[0, 0] == pytest.approx(8 / 12)  # 0.25 >= 0.25: mask and halo
    assert iou_curves(maps, masks, at, strict=True)[0, 0] == pytest.approx(4 / 8)  # only the 1s
    v = PAPER_GRID.astype(np.float32)
    v = np.concatenate([v, np.nextafter(v, np.float32(0)), np.nextafter(v, np.float32(1))])
    for dtype in (np.float32, np.float64):
        x = v.astype(dtype)
        np.testing.assert_array_equal(threshold_passes(x, strict_thresholds(PAPER_GRID, dtype)),
                                      (x[:, None] > PAPER_GRID[None]).sum(1))


def test_the_oracle_is_the_best_of_the_paper_grid_on_the_evaluation_rows():
    """``<method>:oracle`` takes the ``:paper`` curves (the best of their mean on the evaluation rows), not our grid's;
    without them, our grid's. The held-out column chooses on our grid either way."""
    rows = pd.DataFrame({"sample_id": list("abcd"), "word": "w", "word_type": "object",
                         "split": ["val", "val", "test", "test"]})
    ours = threshold_grid(3)  # 0.25, 0.5, 0.75
    curves = {"cmi": np.array([[0.2, 0.9, 0.3], [0.2, 0.8, 0.3], [0.1, 0.7, 0.9], [0.1, 0.5, 0.9]]),
              "cmi:paper": np.tile(np.linspace(0.2, 0.6, len(PAPER_GRID)), (4, 1))}
    curves["cmi:paper"][2, -1] = 0.4  # on the evaluation rows: the best paper threshold is the one before the last
    whole = np.full(4, 0.3)
    kw = dict(calibration_split="val", seed=0, thresholds=ours)
    per_row, summary = evaluate_curves(rows, curves, whole, **kw)
    s = summary.set_index("word_type").loc["all"]
    assert s["cmi"] == pytest.approx(0.6) and (per_row["threshold:cmi"] == 0.5).all()  # chosen on val: 0.5
    assert s["cmi:oracle"] == pytest.approx(0.2 + 0.4 * 48 / 49)
    assert "cmi:paper" not in summary and "cmi:paper:oracle" not in summary
    _, ours_only = evaluate_curves(rows, {"cmi": curves["cmi"]}, whole, **kw)
    assert ours_only.iloc[0]["cmi:oracle"] == pytest.approx(0.9)  # our grid's best on the test rows (0.75)


# ---- attention_ddim: DAAM while regenerating the inverted image ---------------------------------------------------
def test_regeneration_attention_keeps_images_apart(shapes_model, dataset, rows):
    """Two images regenerated in one batch: each image's token maps equal those of the image regenerated alone
    (the recorder's slots; to 1e-5 of the largest, measured 2.3e-6: other batches round differently), and differ
    from the other image's. ``ddim_steps`` 0: no ``attention_ddim``; 2: its words' maps of that regeneration."""
    sids = list(dict.fromkeys(rows["sample_id"]))
    x0 = encode_samples(shapes_model, dataset, sids)
    captions = [rows.loc[rows["sample_id"] == s, "caption"].iloc[0] for s in sids]
    both = regeneration_attention(shapes_model, x0, captions, steps=3, batch_size=64)
    assert both.shape[0] == 2 and both.shape[-2:] == x0.shape[-2:]
    for i in range(2):
        alone = regeneration_attention(shapes_model, x0[i:i + 1], captions[i:i + 1], steps=3, batch_size=64)
        assert_close_to_scale(both[i].numpy(), alone[0].numpy(), 1e-5, f"image {i}")
    assert np.abs((both[0] - both[1]).numpy()).max() > 0.1 * float(both.abs().max())
    first = rows[rows["sample_id"] == sids[0]]
    kw = dict(n_draws=2, sampler=SAMPLER, seed=0, batch_size=64, progress=False)
    assert "attention_ddim" not in compute_maps(shapes_model, dataset, first, ddim_steps=0, **kw)
    maps = compute_maps(shapes_model, dataset, first, ddim_steps=3, **kw)
    want = word_attention(shapes_model, both[0], captions[0], list(first["word"]), sids[0])
    assert_close_to_scale(maps["attention_ddim"], want, 1e-5, "attention_ddim")
    assert "attention_ddim" in map_keys(maps)
    masks = np.ones((len(first), shapes_model.resolution, shapes_model.resolution), bool)
    curves, _ = row_curves(maps, lambda a, b: masks[a:b], shapes_model.resolution, threshold_grid(5))
    assert set(MAP_METHODS) <= set(curves) and "attention_ddim:paper" in curves


# ---- intervention -------------------------------------------------------------------------------------------------
def test_omit_edits_put_a_placeholder_or_delete_the_word():
    """The public code's omit edit replaces the whole word by "_" (not inside another word); ``delete`` takes the
    row's context; a swap replaces the word by its table entry."""
    rows = pd.DataFrame({"sample_id": ["a", "a"], "word": ["red", "circle"], "word_type": ["colour", "object"],
                         "caption": ["a red circle left of a redo square"] * 2,
                         "context": ["a circle left of a redo square", "a red left of a redo square"]})
    placeholder = edits_of(rows, SWAPS, 2)
    assert list(zip(placeholder["edit"], placeholder["prompt"])) == [
        ("omit", "a _ circle left of a redo square"), ("swap", "a blue circle left of a redo square"),
        ("omit", "a red _ left of a redo square"), ("swap", "a red square left of a redo square")]
    deleted = edits_of(rows, {}, 2, omit="delete")
    assert list(deleted["prompt"]) == list(rows["context"]) and set(deleted["edit"]) == {"omit"}
    assert len(edits_of(rows, {}, 1)) == 1
    with pytest.raises(ValueError, match="infodecomp.intervene.omit 'drop' is not one of"):
        edits_of(rows, {}, 1, omit="drop")


def two_caption_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Two word rows of the first image from different captions: its first word under its caption, and the shape
    word of its second object under a caption of that object alone ("a <colour> <shape>")."""
    first = rows[rows["sample_id"] == rows["sample_id"].iloc[0]]
    second = first[first["objects"] == "1"].set_index("word_type")
    other = f"a {second.loc['colour', 'word']} {second.loc['object', 'word']}"
    return pd.DataFrame([first.iloc[0], second.loc["object"]]).assign(
        caption=[first["caption"].iloc[0], other]).reset_index(drop=True)


def test_each_caption_of_an_image_is_inverted_under_itself(shapes_model, dataset, rows):
    """Two word rows of one image from different captions, edited together: each edit's change map and regeneration
    attention equal those of its row edited alone (each (image, caption) is inverted under its own caption):
    exactly with a batch of 4 (one (image, caption) per chunk, the same arithmetic), to 1e-4 of the largest with a
    batch of 64 (both inverted in one call: rounding of another batch carried along 6 DDIM steps, measured 2.5e-5
    for the change and 2.5e-6 for the attention). Inverting under the other caption changes the map by far more."""
    two = two_caption_rows(rows)
    assert two["sample_id"].nunique() == 1 and two["caption"].nunique() == 2
    edits = edits_of(two, {}, 2)
    latents_of = dict(zip(two["sample_id"][:1], encode_samples(shapes_model, dataset, list(two["sample_id"][:1]))))
    for batch, share in ((4, 0), (64, 1e-4)):
        kw = dict(steps=3, solver="ddim", batch_size=batch, progress=False)
        change, attention = change_maps(shapes_model, latents_of, edits, **kw)
        for i in range(2):
            alone = change_maps(shapes_model, latents_of, edits.iloc[[i]].reset_index(drop=True), **kw)
            assert_close_to_scale(change[i], alone[0][0], share, f"change {i}, batch {batch}")
            assert_close_to_scale(attention[i], alone[1][0], share, f"attention_regen {i}, batch {batch}")
    wrong = edits_of(two.iloc[[1]].assign(caption=two["caption"].iloc[0]), {}, 1)
    assert np.abs(change_maps(shapes_model, latents_of, wrong, **kw)[0][0] - change[1]).max() > 0.1 * change[1].max()


def test_a_swap_edits_cmi_map_is_the_captions_information_against_the_swapped_caption(shapes_model, dataset, rows):
    """``word_maps`` of a swap edit: ``cmi`` is the pixel-wise i^o of (caption, swapped caption) from
    ``score_item`` (the public code's ``cmi_pixel_swap``), ``cmi_s`` its i^s (to 1e-5 of the largest: the edit's
    omit prompt shares its denoiser batches)."""
    first = rows[rows["sample_id"] == rows["sample_id"].iloc[0]]
    edits = edits_of(first, SWAPS, 1)
    assert list(edits["edit"]) == ["omit", "swap"]
    sid, caption, swapped = edits.iloc[1][["sample_id", "caption", "prompt"]]
    latents_of = {sid: encode_samples(shapes_model, dataset, [sid])[0]}
    kw = dict(n_draws=4, sampler=SAMPLER, seed=0, batch_size=64)
    got = word_maps(shapes_model, latents_of, edits, progress=False, **kw)
    want = score_item(shapes_model, latents_of[sid], [(caption, swapped)], item=sid, pixelwise=True, **kw).maps
    assert_close_to_scale(got["cmi"][1], want["i_o"][0], 1e-5, "cmi")
    assert_close_to_scale(got["cmi_s"][1], want["i_s"][0], 1e-5, "cmi_s")
    assert np.abs(got["cmi"][0] - got["cmi"][1]).max() > 0.1 * np.abs(got["cmi"][1]).max()


def test_intervention_reports_every_predictor(shapes_model, dataset, rows):
    """``run_intervention``: the predictors (cmi, cmi_s, attention_regen, attention_itd) and the mask baselines, and
    per edit the totals of each (cmi_nats and cmi_s_nats for the CMI maps; no ``attention_total``)."""
    edits, change, preds, table = run_intervention(
        shapes_model, dataset, rows, swaps=SWAPS, words_per_image=1, steps=2, solver="ddim", n_draws=2,
        sampler=SAMPLER, seed=0, n_boot=20, progress=False)
    assert list(preds) == [*PREDICTORS, *MASK_BASELINES]
    assert all(preds[m].shape == change.shape for m in preds)
    totals = {"cmi_nats": "cmi", "cmi_s_nats": "cmi_s", "attention_regen_total": "attention_regen",
              "attention_itd_total": "attention_itd"}
    for column, m in totals.items():
        np.testing.assert_allclose(edits[column], preds[m].reshape(len(edits), -1).sum(1), err_msg=column)
    assert "attention_total" not in edits and (edits["attention_regen_total"] > 0).all()
    assert set(PREDICTORS) <= set(table["predictor"])
