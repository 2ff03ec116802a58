"""Information decomposition on the shapes world with the shipped model: the numbers the issue asks for, on small
runs (each test prints what it measured; run with -s to see them).

A 600-image world (test and val: 60 images each); stratified draws (loc 0, scale 2, clip 3) as in config.yaml.
"""
import time

import numpy as np
import pandas as pd
import pytest

from difflens.info.aro import aggregate, item_outcomes, score_shard, select_items
from difflens.info.estimators import LogSNRSampler, score_item
from difflens.info.inputs import encode_samples, word_rows
from difflens.info.intervene import MASK_BASELINES, correlations, run_intervention, word_maps
from difflens.info.localize import compute_maps, evaluate, ground_truth
from difflens.models import load_model
from conftest import SHIPPED_SHAPES, load_shipped_shapes, make_shapes_world
from test_infodecomp import grid_shift

#: the module's fixtures (world, model) are built once, on one xdist worker; slow: `make test-science`
pytestmark = [pytest.mark.xdist_group("info_world"), pytest.mark.science]
#: the draw seeds every claim is held at
SEEDS = (0, 1, 2)
SAMPLER = LogSNRSampler(0.0, 2.0, 3.0, stratified=True)
SWAPS = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "circle": "square",
         "square": "triangle", "triangle": "circle"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_shapes_world(tmp_path_factory, "info_world", 600)


@pytest.fixture(scope="module")
def model():
    return load_shipped_shapes()


@pytest.fixture(scope="module")
def aro_items(world):
    return select_items(world.aro, world.samples, "test", 12, world.name)


def test_aro_style_table(world, model, aro_items, tmp_path):
    """At each draw seed: i^s picks the true caption over its relation and attribute swaps (chance with one negative:
    0.5) on >= 90% of the images, while i^o prefers the wrong caption (below 0.5) for relation swaps and word
    order."""
    acc = {}
    for seed in SEEDS:
        scores = score_shard(model, world, aro_items, tmp_path / f"aro{seed}.csv", n_draws=16, sampler=SAMPLER,
                             seed=seed, progress=False)
        table = aggregate(item_outcomes(scores), min_group=1)
        acc[seed] = table[table["metric"] == "accuracy"].pivot(index="kind", columns="score", values="accuracy")
        print(f"seed {seed}, caption choice on {len(aro_items) // 3} test images, 16 draws (share where the true "
              f"caption wins):\n{acc[seed][['i_s', 'err', 'i_o']].round(3).to_string()}")
    for seed, a in acc.items():
        assert a.loc["relation", "i_s"] >= 0.9 and a.loc["attribute", "i_s"] >= 0.9, seed
        # i^o measures how far a caption moves the denoiser, not whether it fits: it prefers the wrong caption here
        assert a.loc["relation", "i_o"] < 0.5 and a.loc["order", "i_o"] < 0.5, seed


def test_bf16_scores_agree_with_fp32(world, aro_items, model):
    bf16 = load_model("shapes", str(SHIPPED_SHAPES), device="cpu", dtype="bfloat16")
    sids = sorted(aro_items["sample_id"].unique())[:6]
    rows = aro_items[aro_items["sample_id"].isin(sids) & (aro_items["kind"] != "order")]
    out = {}
    for name, m in (("fp32", model), ("bf16", bf16)):
        pairs = [(c, "") for c in pd.unique(pd.concat([rows["caption"], rows["negatives"].str.slice(2, -2)]))]
        vals = []
        for sid in sids:
            mine = [p for p in pairs if p[0] in set(rows.loc[rows["sample_id"] == sid, "caption"]) |
                    set(rows.loc[rows["sample_id"] == sid, "negatives"].str.slice(2, -2))]
            vals.append(score_item(m, encode_samples(m, world, [sid])[0], mine, n_draws=16, sampler=SAMPLER, seed=0,
                                   item=sid).mean("i_s"))
        out[name] = np.concatenate(vals)
    r = np.corrcoef(out["fp32"], out["bf16"])[0, 1]
    rel = np.abs(out["fp32"] - out["bf16"]).mean() / np.abs(out["fp32"]).mean()
    print(f"i^s of {len(out['fp32'])} captions, bf16 weights vs fp32 on the CPU: Pearson {r:.4f}, mean |difference| "
          f"{rel:.3f} of the mean |i^s|")
    assert r > 0.98 and rel < 0.1


def test_cmi_localizes_object_words(world, model):
    """At each draw seed, CMI maps of object words overlap their objects better than the whole-image baseline (the
    map a model that learned nothing about the word would give) by 0.1 mIoU or more."""
    rows = word_rows(world, ["val", "test"], 8, need_masks=True)
    truth = ground_truth(world, rows, model.resolution)
    cols = ["n", "whole_image", "mi", "cmi", "cmi:oracle", "attention_itd", "attention+cmi"]
    summaries = {}
    for seed in SEEDS:
        maps = compute_maps(model, world, rows, n_draws=16, sampler=SAMPLER, seed=seed, progress=False)
        _, summary = evaluate(rows, maps, truth, calibration_split="val", seed=seed)
        summaries[seed] = summary.set_index("word_type")
        print(f"seed {seed}, mIoU on 8 test images (threshold chosen on 8 val images), 16 draws:\n"
              f"{summaries[seed][cols].round(3)}")
    for seed, summary in summaries.items():
        assert summary.loc["object", "cmi"] >= summary.loc["object", "whole_image"] + 0.1, seed


def intervention_tables(world, model, rows, seeds: list[int], n_draws: int) -> dict[int, pd.DataFrame]:
    """The omit edits' correlation table at each seed: ``run_intervention`` at the first seed, and at the others only
    what the seed changes (the CMI and attention draws, the bootstrap resamples) redone on the same change maps and
    masks, which do not depend on it."""
    kw = dict(n_draws=n_draws, sampler=SAMPLER, progress=False)
    edits, change, preds, first = run_intervention(model, world, rows, swaps={}, words_per_image=1, steps=10,
                                                   solver="ddim", seed=seeds[0], n_boot=500, omit="delete", **kw)
    images = list(dict.fromkeys(edits["sample_id"]))
    latents_of = dict(zip(images, encode_samples(model, world, images)))
    fixed = {b: preds[b] for b in (*MASK_BASELINES, "attention_regen")}  # seed-free: the masks, the ODE's trace
    tables = {seeds[0]: first}
    for seed in seeds[1:]:
        maps = word_maps(model, latents_of, edits, seed=seed, **kw)
        tables[seed] = correlations(edits, change, {**maps, **fixed}, n_boot=500, seed=seed)
    return {seed: t[t["edit"] == "omit"].set_index(["predictor", "level"]) for seed, t in tables.items()}


def test_cmi_predicts_the_change_of_an_omitted_word(world, model):
    """96 val and test images, each first object's shape word omitted (deleted: the shapes tokenizer has no "_", so
    the public code's placeholder would be a token the model never saw; 10 DDIM steps, CMI from 32 draws), at seeds
    0-2 (the draws and the bootstrap resamples): images whose word carries more information change more (image level),
    and within an image CMI predicts where it changes (pixel level), both intervals above 0 at every seed. Against
    the mask baselines (paired bootstrap of the difference of correlations): at pixel level CMI beats the edited
    word's own object mask (about +0.07, interval above 0 at every seed; at 8 draws the interval touched 0), but
    the mask of all objects in the image beats CMI (about -0.14, interval below 0 at every seed): omitting one
    object's word changes the other objects too, and the change follows where the objects are more than where the
    word's information is. At image level neither difference is resolved on 96 images (printed, not asserted).
    (On 32 images the image-level interval of CMI itself still straddled 0: r 0.15 [-0.21, 0.51].)"""
    rows = word_rows(world, ["val", "test"], 48, need_masks=True)
    start = time.perf_counter()
    tables = intervention_tables(world, model, rows, [0, 1, 2], n_draws=32)
    first = tables[0]
    spread = pd.DataFrame({f"seed {seed}": t["pearson"].round(3).astype(str) + " [" + t["ci_low"].round(3).astype(str)
                           + ", " + t["ci_high"].round(3).astype(str) + "]" for seed, t in tables.items()})
    print(f"Pearson correlation with the change (95% bootstrap interval), {int(first['n'].iloc[0])} images, the first "
          f"object's shape word omitted; <map>-<mask>: paired difference of correlations; "
          f"{time.perf_counter() - start:.0f} s:\n{spread.to_string()}")
    for seed, t in tables.items():
        for level in ("image", "pixel"):
            assert t.loc[("cmi", level), "ci_low"] > 0, (seed, level)
        assert t.loc[("cmi-object_mask", "pixel"), "ci_low"] > 0, seed
        assert t.loc[("cmi-all_objects_mask", "pixel"), "ci_high"] < 0, seed  # the finding: the mask wins


def repeated_estimates(model, x0, caption: str, item, stratified: bool, counts: list[int],
                       seeds: range) -> dict[tuple[str, int], list[float]]:
    """(score, draw count) -> the estimate of i^s / i^o of one caption at each seed (independent runs). Plain: the
    first n draws of one max(counts)-draw run per seed (draw j is seeded by (seed, item, j), so that is exactly an
    n-draw run); stratified: a run per draw count (its grid of strata depends on n)."""
    sampler = LogSNRSampler(SAMPLER.loc, SAMPLER.scale, SAMPLER.clip, stratified)
    out: dict[tuple[str, int], list[float]] = {}
    for seed in seeds:
        runs = {n: score_item(model, x0, [(caption, "")], n_draws=n, sampler=sampler, seed=seed, item=item)
                for n in (counts if stratified else [max(counts)])}
        for k in ("i_s", "i_o"):
            for n in counts:
                value = runs[n].mean(k)[0] if stratified else runs[max(counts)].per_draw[k][:n, 0].mean()
                out.setdefault((k, n), []).append(float(value))
    return out


def spread_and_its_error(values: list[float]) -> tuple[float, float]:
    """(standard deviation (ddof 1) of repeated estimates, its jackknife standard error over the repeats)."""
    v = np.asarray(values, dtype=np.float64)
    loo = np.array([np.delete(v, i).std(ddof=1) for i in range(len(v))])
    return float(v.std(ddof=1)), float(np.sqrt((len(v) - 1) / len(v) * ((loo - loo.mean()) ** 2).sum()))


def mean_over_items(spreads: list[tuple[float, float]]) -> tuple[float, float]:
    """(mean of the items' standard deviations, its standard error: the items' jackknife errors combined as
    independent)."""
    return float(np.mean([v for v, _ in spreads])), float(np.sqrt(sum(e ** 2 for _, e in spreads)) / len(spreads))


def test_stratified_sampler_is_not_worse_at_any_draw_count(world, model, aro_items):
    """Per-item standard errors of i^s and i^o at 16-128 draws, measured, not derived: the standard deviation of
    the estimate over 10 independent plain runs (seeds 0-9) and over 10 independent stratified runs at each draw
    count (seeds 10-19) of each of 4 relation items, averaged over the items. Stratified is not worse at any draw
    count: its mean standard error is at most the plain one plus twice the standard error of their difference
    (each item's standard deviation's jackknife error over its 10 repeats, combined over items and samplers).
    (Measured: stratified 0.3-0.8 of plain, lowest for i^o at 128 draws; better by more than the margin except
    for i^s at 16 and 32 draws; printed, not asserted.)"""
    counts, seeds = [16, 32, 64, 128], {"plain": range(10), "stratified": range(10, 20)}
    rows = aro_items[aro_items["kind"] == "relation"].head(4)
    spread: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    start = time.perf_counter()
    for r in rows.itertuples():
        x0 = encode_samples(model, world, [r.sample_id])[0]
        for s, runs in seeds.items():
            for (k, n), values in repeated_estimates(model, x0, r.caption, r.sample_id, s == "stratified", counts,
                                                     runs).items():
                spread.setdefault((s, k, n), []).append(spread_and_its_error(values))
    lines = []
    for k in ("i_s", "i_o"):
        for n in counts:
            (plain, e_p), (strat, e_s) = mean_over_items(spread["plain", k, n]), mean_over_items(
                spread["stratified", k, n])
            lines.append({"score": k, "draws": n, "plain": plain, "stratified": strat, "ratio": strat / plain,
                          "margin": 2 * np.hypot(e_p, e_s)})
    table = pd.DataFrame(lines).set_index(["score", "draws"])
    need = {k: next((n for n in range(8, 129, 8) if np.interp(n, counts, table.loc[k, "stratified"]) <=
                     table.loc[(k, 128), "plain"]), 128) for k in ("i_s", "i_o")}
    print(f"mean per-item standard error (nats: sd over 10 independent runs), {len(rows)} relation items, "
          f"{time.perf_counter() - start:.0f} s; margin: 2 standard errors of stratified - plain:\n{table.round(3)}\n"
          f"stratified draws that match 128 plain draws (interpolated): i^s {need['i_s']}, i^o {need['i_o']}")
    assert (table["stratified"] <= table["plain"] + table["margin"]).all()


def test_coarser_grid_on_the_shapes_model(world, model, aro_items):
    """Every 20th timestep: i^s moves by under 0.15 of its standard error when x is noised at the timestep's own
    log-SNR (0.09 measured). The old scheme, noised at the draw's log-SNR, is only printed beside it (0.12
    measured): the two are not compared."""
    rows = aro_items[aro_items["kind"] == "relation"].head(4)
    latents = encode_samples(model, world, list(rows["sample_id"]))
    pairs = [[(c, "")] for c in rows["caption"]]
    shift, se = grid_shift(model, latents, pairs, 20, "timestep", 32)
    old, _ = grid_shift(model, latents, pairs, 20, "draw", 32)
    print(f"shapes model, grid coarsened 20x: mean |change of i^s| {shift:.3f} nats noised at the timestep, "
          f"{old:.3f} noised at the draw (mean standard error {se:.3f})")
    assert shift < 0.15 * se
