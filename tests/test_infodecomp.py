"""The information estimators against closed forms (a Gaussian world), their draws, batching, seeding and range checks,
and the ARO / localization / intervention bookkeeping on small synthetic inputs."""
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.info.aro import SYMMETRIC_RELATIONS, aggregate, item_outcomes, score_shard, shard_of
from difflens.info.estimators import LogSNRSampler, information_scores, mmse_curve, require_unconditional, score_item
from difflens.info.intervene import (bootstrap_ci, correlations, edits_of, mask_maps, ode_path, pearson, swap_word,
                                     why_no_masks)
from difflens.info import memory
from difflens.info.localize import (BASE_MAPS, PAPER_GRID, compute_maps, daam_map, evaluate, evaluate_curves,
                                    ground_truth, iou_curves, row_curves, threshold_grid, threshold_passes)
from difflens.info.localize_shards import (MAP_KEYS, curves_of, join_shards, localize_rows, localize_shard,
                                           planned_shard, shard_plan)
from difflens.info.records import append_record, read_records
from difflens.info.toy import FlowGaussianToyModel, GaussianToyModel, linear_alphas_cumprod
from difflens.models.catalog import ModelConfigError, schedule_log_snr

V = torch.tensor([[[1.0, -0.5], [0.8, 0.3]]])


@pytest.fixture(scope="module")
def toy():
    return GaussianToyModel(V, 0.5)


def test_importance_weights_integrate_a_constant():
    s = LogSNRSampler(loc=1.0, scale=2.0, clip=3.0)
    a, w = s.draw(200_000, torch.Generator().manual_seed(0))
    assert a.min() >= 1 - 6 - 1e-9 and a.max() <= 1 + 6 + 1e-9
    assert float(w.mean()) == pytest.approx(12.0, rel=0.02)  # Int_{-5}^{7} 1 da
    exact = float(torch.nn.functional.softplus(torch.tensor(7.0)) - torch.nn.functional.softplus(torch.tensor(-5.0)))
    assert float((w * torch.sigmoid(a)).mean()) == pytest.approx(exact, rel=0.02)
    # the stratified grid: the same proposal (its quantiles), every stratum hit once
    a, w, _ = LogSNRSampler(1.0, 2.0, 3.0, stratified=True).item_draws(1000, (1,), seed=0, item="x")
    u = torch.sigmoid((a - 1.0) / 2.0)
    lo, hi = torch.sigmoid(torch.tensor(-3.0)), torch.sigmoid(torch.tensor(3.0))
    q = ((u - lo) / (hi - lo)).numpy()
    assert np.all(np.floor(q * 1000) == np.arange(1000))
    assert float(w.mean()) == pytest.approx(12.0, rel=1e-3)


def test_gaussian_world_closed_forms(toy):
    """The toy itself: the MMSE gap integrates to the closed-form MI, and the mean of the closed-form errors of
    sampled points is the MMSE; the estimators' MMSE curve matches the closed-form error of its points."""
    assert toy.information_on((-30, 30)) == pytest.approx(toy.mutual_information(), rel=1e-5)
    x, _ = toy.sample(2000, seed=3)
    assert np.mean([toy.point_error(p, 0.5) for p in x]) == pytest.approx(toy.mmse(0.5), rel=0.03)
    x = x[:32]
    a = torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64)
    curve = mmse_curve(toy, x, "", a, n_draws=128, seed=0)
    exact = [np.mean([toy.point_error(p, float(toy.log_snr[t])) for p in x]) for t in toy.timestep_for_logsnr(a)]
    np.testing.assert_allclose(curve, exact, rtol=0.03)


def test_estimators_match_quadrature_within_their_monte_carlo_error(toy):
    sampler = LogSNRSampler(0.0, 2.0, 3.0)
    x, y = toy.sample(40, seed=1)
    est_s, est_o, exact_s, exact_o, se_s, se_o = [], [], [], [], [], []
    for k in range(len(x)):
        sc = score_item(toy, x[k], [(f"y={y[k]}", "")], n_draws=200, sampler=sampler, seed=0, item=k)
        est_s.append(sc.mean("i_s")[0]), est_o.append(sc.mean("i_o")[0])
        se_s.append(sc.stderr("i_s")[0]), se_o.append(sc.stderr("i_o")[0])
        es, eo = toy.point_information(x[k], y[k], sampler.interval, n=801)
        exact_s.append(es), exact_o.append(eo)
    z_s = (np.array(est_s) - exact_s) / np.array(se_s)
    z_o = (np.array(est_o) - exact_o) / np.array(se_o)
    # pointwise: errors in units of their own standard errors look standard normal
    assert np.abs(z_s).max() < 4.5 and np.abs(z_o).max() < 4.5
    assert abs(z_s.mean()) < 4 / np.sqrt(len(z_s)) and abs(z_o.mean()) < 4 / np.sqrt(len(z_o))
    # the average over (x, y) estimates the mutual information restricted to the interval
    target = toy.information_on(sampler.interval)
    spread = np.std(est_s, ddof=1) / np.sqrt(len(est_s))
    assert abs(np.mean(est_s) - target) < 4 * spread


def test_flow_matching_estimates_match_the_closed_form_as_the_variance_preserving_ones_do(toy):
    """The Gaussian world denoised by a flow-matching velocity model (x_s = (1 - s) x0 + s eps, v = eps - x0,
    eps_hat = x_s + (1 - s) v_hat, on the flow timestep table): the same epsilon as the variance-preserving form at
    the same log-SNR, and the same mutual information within Monte-Carlo error, both at the closed form."""
    from difflens.models.flow import flow_alphas_cumprod

    flow = FlowGaussianToyModel(V, 0.5)
    same_table = GaussianToyModel(V, 0.5, flow_alphas_cumprod(1000))
    x, y = toy.sample(40, seed=1)
    t = torch.tensor([1, 20, 250, 500, 750, 999] * 6 + [400, 600, 5, 990])
    cond = toy.encode_text([f"y={v}" if i % 2 else "" for i, v in enumerate(y)])
    noisy = flow.add_noise_logsnr(x, torch.randn_like(x), flow.log_snr[t])
    torch.testing.assert_close(flow.denoise(noisy, t, cond), same_table.denoise(noisy, t, cond), rtol=1e-4,
                               atol=1e-5)
    sampler = LogSNRSampler(0.0, 2.0, 3.0)
    target = toy.information_on(sampler.interval)
    means, errors = [], []
    for model in (toy, flow):
        est = [score_item(model, x[k], [(f"y={y[k]}", "")], n_draws=100, sampler=sampler, seed=0,
                          item=k).mean("i_s")[0] for k in range(len(x))]
        means.append(np.mean(est)), errors.append(np.std(est, ddof=1) / np.sqrt(len(est)))
        assert abs(means[-1] - target) < 4 * errors[-1], model
    assert abs(means[0] - means[1]) < 4 * np.hypot(*errors)


class CoarseGrid:
    """A model seen through every k-th timestep of its schedule (the grid a draw is snapped to)."""

    def __init__(self, base, k: int):
        self.base, self.k = base, k
        self.kind, self.source = base.kind, base.source
        self.log_snr = base.log_snr[::k]

    def timestep_for_logsnr(self, a):
        from difflens.models.base import nearest_timestep

        return nearest_timestep(a, self.log_snr)

    def add_noise_logsnr(self, x0, noise, a):
        return self.base.add_noise_logsnr(x0, noise, a)

    def encode_text(self, prompts):
        return self.base.encode_text(prompts)

    def denoise(self, x, t, cond):
        return self.base.denoise(x, t * self.k, cond)


def grid_shift(model, latents, pairs, k: int, noise_at: str, n_draws: int) -> tuple[float, float]:
    """Mean |i^s(coarse grid) - i^s(full grid)| over items (same draws), and the mean standard error of i^s."""
    diffs, ses = [], []
    for i, (x, pair) in enumerate(zip(latents, pairs)):
        kw = dict(n_draws=n_draws, sampler=LogSNRSampler(0.0, 2.0, 3.0), seed=0, item=i, noise_at=noise_at)
        full, coarse = score_item(model, x, pair, **kw), score_item(CoarseGrid(model, k), x, pair, **kw)
        diffs.append(coarse.mean("i_s")[0] - full.mean("i_s")[0])
        ses.append(full.stderr("i_s")[0])
    return float(np.mean(np.abs(diffs))), float(np.mean(ses))


def test_noise_at_the_timesteps_log_snr_survives_a_coarser_grid():
    """Every 20th timestep only: the estimate moves by about a tenth of its standard error (0.12 measured, under
    0.15 asserted) when x is noised at the chosen timestep's own log-SNR. The old scheme (noised at the draw's
    log-SNR) is only printed: the exact Gaussian denoiser tolerates its off-grid noise too (0.06 measured), and
    tests/test_info_science.py prints it on the shapes model as well, asserting only the new scheme there."""
    toy = GaussianToyModel(2 * V, 0.3)
    x, y = toy.sample(12, seed=2)
    pairs = [[(f"y={v}", "")] for v in y]
    shift, se = grid_shift(toy, x, pairs, 20, "timestep", 300)
    old, _ = grid_shift(toy, x, pairs, 20, "draw", 300)
    print(f"toy, grid coarsened 20x: i^s moves {shift / se:.2f} standard errors noised at the timestep, "
          f"{old / se:.2f} noised at the draw")
    assert shift < 0.15 * se


def test_stratified_draws_are_not_worse(toy):
    """Spread of the estimate over 24 seeds, for one point, at several draw counts."""
    x, y = toy.sample(1, seed=5)
    pair = [(f"y={y[0]}", "")]
    for n in (16, 64):
        spread = {}
        for strat in (False, True):
            vals = [score_item(toy, x[0], pair, n_draws=n, sampler=LogSNRSampler(0, 2, 3, strat), seed=s,
                               item=0).mean("i_o")[0] for s in range(24)]
            spread[strat] = np.std(vals, ddof=1)
        assert spread[True] <= spread[False], (n, spread)


class CountingModel(GaussianToyModel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows = []

    def denoise(self, x_t, t, cond):
        self.rows.append(len(x_t))
        return super().denoise(x_t, t, cond)


def test_prompts_share_draws_base_runs_once_and_maps_sum_to_totals():
    model = CountingModel(V, 0.5)
    x, _ = model.sample(1, seed=0)
    pairs = [("y=0.5", ""), ("y=-1", ""), ("y=2", "y=0.5")]
    sc = score_item(model, x[0], pairs, n_draws=8, sampler=LogSNRSampler(0, 2, 3), seed=0, item="a",
                    batch_size=1000, pixelwise=True)
    assert model.rows == [8 * 4]  # 4 distinct prompts ("" once), every draw, one batch
    for name in ("i_s", "i_o", "err"):
        np.testing.assert_allclose(sc.maps[name].sum((1, 2)), sc.mean(name), rtol=1e-5)
    # the same (a, eps) for every pair: a prompt paired with itself has exactly zero information
    same = score_item(model, x[0], [("y=0.5", "y=0.5")], n_draws=8, sampler=LogSNRSampler(0, 2, 3), seed=0, item="a")
    assert same.mean("i_s")[0] == 0 and same.mean("i_o")[0] == 0


def test_scores_do_not_depend_on_batch_size_or_order(toy):
    x, y = toy.sample(5, seed=4)
    prompts = [[f"y={v}", "y=0"] for v in y]
    a = information_scores(toy, x, prompts, n_draws=6, batch_size=64, sample_keys=list("abcde"))
    b = information_scores(toy, x, prompts, n_draws=6, batch_size=5, sample_keys=list("abcde"))
    np.testing.assert_allclose(a.i_s, b.i_s, rtol=1e-6)
    order = [4, 2, 0]
    c = information_scores(toy, x[order], [prompts[i] for i in order], n_draws=6, sample_keys=[list("abcde")[i]
                                                                                               for i in order])
    np.testing.assert_allclose(c.i_o, a.i_o[order], rtol=1e-6)


def test_log_snr_interval_outside_the_trained_range_is_rejected():
    with pytest.raises(ModelConfigError, match=r"infodecomp.loc, infodecomp.scale, infodecomp.clip = 1.0, 2.0, "
                                               r"4.0 .*\[-7.00, 9.00\].*-5.36 .. 7.07"):
        LogSNRSampler(1.0, 2.0, 4.0).check_range((-5.36, 7.07), "SD")
    LogSNRSampler(1.0, 2.0, 3.0).check_range((-5.36, 7.07), "SD")  # the paper's setting fits
    sd = schedule_log_snr({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    assert min(sd) == pytest.approx(-5.364, abs=1e-3) and max(sd) == pytest.approx(7.069, abs=1e-3)


def test_a_model_without_an_unconditional_branch_is_refused():
    class Unconditional:
        kind, source = "image_encoder", "facebook/dinov2-base"

    class ClassModel:
        kind, source = "dit", "facebook/DiT-XL-2-256"

    with pytest.raises(ModelConfigError, match="image_encoder model 'facebook/dinov2-base' has no conditional"):
        require_unconditional(Unconditional())
    require_unconditional(ClassModel())  # the null class is a DiT's unconditional branch


# ---- ARO bookkeeping -------------------------------------------------------------------------------------------
def outcome_rows(kind, group, correct_list, n_ties=0):
    """Outcomes of one group; the last ``n_ties`` items tie (margin 0, counted wrong)."""
    n = len(correct_list)
    return [{"item": i, "sample_id": f"s{i}", "kind": kind, "group": group, "score": "i_o", "n_candidates": 2,
             "margin_nats": 0.0 if i >= n - n_ties else 1.0 if c else -1.0, "tie": i >= n - n_ties,
             "correct": c} for i, c in enumerate(correct_list)]


def test_aggregate_reports_aro_macro_accuracies():
    rows = (outcome_rows("relation", "on", [True] * 3 + [False], n_ties=1)
            + outcome_rows("relation", "riding", [False] * 4)
            + outcome_rows("relation", "next to", [False] * 10, n_ties=2)
            + outcome_rows("attribute", "red_blue", [True] * 30) + outcome_rows("attribute", "big_small", [False] * 3))
    table = aggregate(pd.DataFrame(rows), min_group=25).set_index(["kind", "metric"])
    assert table.loc[("relation", "accuracy"), "accuracy"] == pytest.approx(3 / 18)
    # macro over "on" and "riding" ("next to" is one of the reference notebook's symmetric relations): (0.75 + 0) / 2
    assert table.loc[("relation", "macro"), "accuracy"] == pytest.approx(0.375)
    assert table.loc[("relation", "macro"), "group"] == "2 groups"
    # ties per line: all relation items, the kept groups only
    assert table.loc[("relation", "accuracy"), "n_ties"] == 3 and table.loc[("relation", "macro"), "n_ties"] == 1
    assert table.loc[("attribute", "macro"), "accuracy"] == 1.0  # only the group with >= 25 items


def test_symmetric_relations_are_the_reference_notebooks_list():
    """The ``symmetric`` list of ARO's notebook "Replicate ARO! VG-Relation, VG-Attribution": 157 relations, no
    duplicates, ending with the eight common ones a shorter copy of it lacks."""
    assert len(SYMMETRIC_RELATIONS) == len(set(SYMMETRIC_RELATIONS)) == 157
    assert SYMMETRIC_RELATIONS[-8:] == ("by", "of", "near", "next to", "with", "beside", "on the side of", "around")
    assert SYMMETRIC_RELATIONS[:3] == ("adjusting", "attached to", "between")
    assert "on" not in SYMMETRIC_RELATIONS and "sitting on" not in SYMMETRIC_RELATIONS
    rows = sum((outcome_rows("relation", g, [k % 2 == 0] * 4) for k, g in enumerate(SYMMETRIC_RELATIONS[-8:])),
               outcome_rows("relation", "on", [True, False]))
    table = aggregate(pd.DataFrame(rows)).set_index("metric")
    assert table.loc["macro", "group"] == "1 groups" and table.loc["macro", "accuracy"] == 0.5  # "on" alone


def test_item_outcomes_precision_at_one_and_ties():
    scores = pd.DataFrame([
        {"item": 0, "sample_id": "a", "kind": "order", "group": "shuffle", "candidate": k, "caption": f"c{k}",
         "i_o_nats": v, "i_s_nats": v, "err_nats": -v} for k, v in enumerate([2.0, 1.0, 3.0, 0.0, 1.5])] + [
        {"item": 1, "sample_id": "b", "kind": "order", "group": "shuffle", "candidate": k, "caption": f"c{k}",
         "i_o_nats": v, "i_s_nats": 5.0, "err_nats": -v} for k, v in enumerate([4.0, 1.0, 3.0, 0.0, 1.5])])
    out = item_outcomes(scores).set_index(["item", "score"])
    assert not out.loc[(0, "i_o"), "correct"] and out.loc[(1, "i_o"), "correct"]
    assert out.loc[(0, "i_o"), "margin_nats"] == pytest.approx(-1.0)
    assert out.loc[(1, "i_s"), "tie"] and out["tie"].sum() == 1
    assert not out.loc[(1, "i_s"), "correct"]  # the authors' rule (true caption last, first maximum): a tie is wrong
    assert out.loc[(1, "err"), "correct"]  # lower error wins
    # ARO's own order: the Order sets list the true caption first (a tie is right), VG-R / VG-A list it last
    aro = item_outcomes(scores, ties="aro").set_index(["item", "score"])
    assert aro.loc[(1, "i_s"), "correct"] and aro.drop((1, "i_s"))["correct"].equals(out.drop((1, "i_s"))["correct"])
    vg = item_outcomes(scores.assign(kind="relation"), ties="aro").set_index(["item", "score"])
    assert vg.loc[(1, "i_s"), "tie"] and not vg.loc[(1, "i_s"), "correct"]
    table = aggregate(item_outcomes(scores)).set_index(["score", "metric"])
    assert table.loc[("i_s", "accuracy"), "n_ties"] == 1 and table.loc[("i_o", "accuracy"), "n_ties"] == 0
    with pytest.raises(ValueError, match="infodecomp.aro.ties must be one of"):
        item_outcomes(scores, ties="first")


class StopAfter(GaussianToyModel):
    """Raises on the n-th denoiser call: a job killed half-way."""

    def __init__(self, *args, stop_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_at, self.n = stop_at, 0

    def denoise(self, x_t, t, cond):
        self.n += 1
        if self.stop_at is not None and self.n == self.stop_at:
            raise RuntimeError("killed")
        return super().denoise(x_t, t, cond)


class ToyDataset:
    """Images of the toy world as a data set: load_image is never called (encode_samples is patched)."""

    def __init__(self, x):
        self.x = x


@pytest.fixture
def toy_aro(monkeypatch):
    x, y = GaussianToyModel(V, 0.5).sample(6, seed=9)
    ids = [f"img{k}" for k in range(6)]
    monkeypatch.setattr("difflens.info.aro.encode_samples", lambda model, ds, sids: ds.x[[ids.index(s) for s in sids]])
    rows = pd.DataFrame([{"sample_id": ids[k], "kind": "relation", "group": "g", "caption": f"y={y[k]}",
                          "negatives": json.dumps([f"y={-y[k]}"]), "item": k} for k in range(6)])
    return ToyDataset(x), rows


def test_aro_shards_resume_and_do_not_change_the_numbers(tmp_path, toy_aro):
    ds, rows = toy_aro
    kw = dict(n_draws=5, sampler=LogSNRSampler(0, 2, 3), seed=0, batch_size=4, progress=False)
    whole = score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "whole.csv", **kw)
    parts = [score_shard(StopAfter(V, 0.5), ds, shard_of(rows, k, 8), tmp_path / f"s{k}.csv", **kw) for k in range(8)]
    assert [len(p) for p in parts] == [2] * 6 + [0, 0]  # 6 images in 8 shards: two empty ones, header only
    joined = pd.concat([pd.read_csv(tmp_path / f"s{k}.csv", dtype={"sample_id": str}) for k in range(8)])
    pd.testing.assert_frame_equal(whole, joined.sort_values(["item", "candidate"]).reset_index(drop=True),
                                  check_dtype=False)
    table = aggregate(item_outcomes(joined))  # 6 relation items of one group: accuracy, group and macro per score
    assert len(table) == 3 * 3 and (table["n"] == 6).all()
    # killed in the 4th image (15 rows per image: 4 denoiser calls at batch 4): the first 3 images are kept
    with pytest.raises(RuntimeError, match="killed"):
        score_shard(StopAfter(V, 0.5, stop_at=3 * 4 + 2), ds, rows, tmp_path / "r.csv", **kw)
    partial = pd.read_csv(tmp_path / "r.csv.partial")
    assert partial["sample_id"].nunique() == 3 and not (tmp_path / "r.csv").exists()
    resumed = StopAfter(V, 0.5)
    again = score_shard(resumed, ds, rows, tmp_path / "r.csv", **kw)
    assert resumed.n == 3 * 4  # only the 3 remaining images
    pd.testing.assert_frame_equal(again, whole)
    assert not (tmp_path / "r.csv.partial").exists()


def test_a_negative_identical_to_the_caption_ties(tmp_path, toy_aro):
    """ARO keeps a word-order perturbation that leaves the caption unchanged: it gets exactly the caption's scores (one
    prompt, the same draws), a tie on every score, counted wrong by default and right by ARO's order rule."""
    ds, rows = toy_aro
    captions = rows["caption"][:2]  # the first with one identical negative, the second with two
    rows = rows.head(2).assign(kind="order", negatives=[json.dumps([c] * k) for k, c in enumerate(captions, 1)])
    scores = score_shard(GaussianToyModel(V, 0.5), ds, rows, tmp_path / "s.csv", n_draws=4,
                         sampler=LogSNRSampler(0, 2, 3), seed=0, batch_size=4, progress=False)
    out = item_outcomes(scores)
    assert len(out) == 6 and out["tie"].all() and (out["margin_nats"] == 0).all() and not out["correct"].any()
    assert item_outcomes(scores, ties="aro")["correct"].all()
    assert (aggregate(out).query("metric == 'accuracy'")["n_ties"] == 2).all()


# ---- localization and intervention bookkeeping -----------------------------------------------------------------
def test_iou_and_threshold_chosen_on_held_out_rows():
    masks = np.zeros((4, 8, 8), bool)
    masks[:, :4] = True
    maps = np.zeros((4, 8, 8))
    maps[:, :4] = 1.0
    maps[:, 4:6] = 0.6  # a halo: thresholds above 0.6 give IoU 1, below it 0.5
    curves = iou_curves(maps, masks, np.array([0.5, 0.7]))
    np.testing.assert_allclose(curves, [[32 / 48, 1.0]] * 4)
    rows = pd.DataFrame({"sample_id": list("abcd"), "word": "w", "word_type": "object",
                         "split": ["val", "val", "test", "test"]})
    # on the held-out rows the halo is brighter (0.9): their best threshold (>= 0.9) is worse on the test rows
    maps_all = {k: maps.copy() for k in ("mi", "cmi", "attention_itd")}
    for m in maps_all.values():
        m[:2, :, :][:, 4:6] = 0.95
    per_row, summary = evaluate(rows, maps_all, masks, calibration_split="val", seed=0, n_thresholds=19)
    s = summary.set_index("word_type").loc["all"]
    assert s["threshold_source"] == "val split" and s["n"] == 2
    assert s["cmi"] == 1.0  # 0.95 threshold also separates the test rows
    # the oracle is the public code's: the best of its grid (0.1 .. 0.5), which never cuts the halo (0.6) off
    assert s["cmi:oracle"] == pytest.approx(32 / 48)
    assert s["whole_image"] == pytest.approx(0.5)
    rows["split"] = "test"  # no held-out split: a 2-fold cross-fit, every row evaluated
    _, summary = evaluate(rows, maps_all, masks, calibration_split="val", seed=0, n_thresholds=19)
    assert summary.iloc[0]["threshold_source"] == "2-fold cross-fit" and summary.iloc[0]["n"] == 4


def dense_curves(maps: dict, masks: np.ndarray, thresholds: np.ndarray, strict: bool = False) -> dict:
    """The simple reference: every map upsampled at once, min-max normalised, compared with every threshold in one
    (N, T, R, R) array (``>=``; ``>`` with ``strict``)."""
    up = {m: torch.nn.functional.interpolate(torch.from_numpy(maps[m])[:, None], size=masks.shape[-2:],
                                             mode="bilinear", align_corners=False)[:, 0].numpy()
          for m in BASE_MAPS}

    def norm(x):
        return np.stack([(m - float(m.min())) / (float(m.max()) - float(m.min())) if m.max() > m.min()
                         else np.zeros_like(m) for m in x])

    up["attention+cmi"] = (norm(up["attention_itd"]) + norm(up["cmi"])) / 2
    out = {}
    for m, v in up.items():
        t = thresholds[None, :, None, None]
        pred = norm(v)[:, None] > t if strict else norm(v)[:, None] >= t
        inter, union = (pred & masks[:, None]).sum((2, 3)), (pred | masks[:, None]).sum((2, 3))
        out[m] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def test_chunked_iou_equals_the_dense_reference():
    rng = np.random.default_rng(3)
    n, side, res = 23, 6, 24
    maps = {k: rng.gamma(0.5, size=(n, side, side)).astype(np.float32) for k in BASE_MAPS}
    maps["cmi"][2] = 0.0  # a constant map (exactly so after upsampling) normalises to zeros
    maps["mi"][4] = np.round(maps["mi"][4] * 4) / 4  # ties: whole plateaus on one value
    masks = rng.random((n, res, res)) < rng.random((n, 1, 1))
    masks[5], masks[6] = False, True  # empty and full masks
    thresholds = threshold_grid(50)
    ref = dense_curves(maps, masks, thresholds)
    ref.update({f"{m}:paper": c for m, c in dense_curves(maps, masks, PAPER_GRID, strict=True).items()})
    for chunk in (1, 4, 23, 100):
        calls = []
        curves, whole = row_curves(maps, lambda a, b: calls.append((a, b)) or masks[a:b], res, thresholds, chunk)
        assert max(b - a for a, b in calls) == min(chunk, n) and calls[-1][1] == n
        assert sorted(curves) == sorted(ref) and len(ref) == 10  # five methods, each on both grids
        for m in ref:
            np.testing.assert_array_equal(curves[m], ref[m], err_msg=f"{m}, chunk {chunk}")
        np.testing.assert_array_equal(whole, masks.reshape(n, -1).mean(1))
    assert masks[2].any() and (ref["cmi"][2] == 0).all()  # a constant map passes no threshold
    assert (np.diff(ref["mi"][6]) <= 0).all() and ref["mi"][6, 0] > ref["mi"][6, -1]  # full mask: IoU = share above
    # values exactly on a threshold pass it; NaN passes none; float64 values compare as they are
    values = np.array([0.0, thresholds[0], np.nextafter(thresholds[0], 0), 0.5, 1.0, np.nan, np.inf, -np.inf])
    for dtype in (np.float32, np.float64):
        v = values.astype(dtype)
        expected = (v[:, None] >= thresholds[None]).sum(1)
        np.testing.assert_array_equal(threshold_passes(v, thresholds), expected)
    uneven = np.array([0.05, 0.06, 0.5, 0.99])
    v = rng.random(1000).astype(np.float32)
    np.testing.assert_array_equal(threshold_passes(v, uneven), (v[:, None] >= uneven[None]).sum(1))
    with pytest.raises(ValueError, match="ascending"):
        iou_curves(maps["mi"], masks, thresholds[::-1])


def test_records_survive_a_torn_append(tmp_path):
    path = tmp_path / "x.partial"
    assert read_records(path) == []
    for k in range(2):
        append_record(path, {"row": np.arange(k, k + 3), "sample_id": np.array([f"s{k}"] * 3)})
    size = path.stat().st_size
    with open(path, "ab") as f:  # a job killed half-way through its third append
        f.write((1000).to_bytes(8, "little") + b"PK\x03\x04 cut")
    records = read_records(path)
    assert [list(r["row"]) for r in records] == [[0, 1, 2], [1, 2, 3]] and records[1]["sample_id"][0] == "s1"
    assert path.stat().st_size == size  # the torn record is cut off, so the next append lands after record 2
    append_record(path, {"row": np.arange(2, 5), "sample_id": np.array(["s2"] * 3)})
    assert [r["sample_id"][0] for r in read_records(path)] == ["s0", "s1", "s2"]


SHIPPED = Path(__file__).resolve().parents[1] / "resources" / "shapes_model"


@pytest.fixture(scope="module")
def word_world(tmp_path_factory):
    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.models import load_model

    root = tmp_path_factory.mktemp("word_world")
    generate(root, ShapesConfig(n_images=60), progress=False)
    return Dataset.load(root), load_model("shapes", str(SHIPPED), device="cpu")


def test_localization_shards_resume_and_match_the_one_job_run(tmp_path, word_world, monkeypatch, one_thread):
    ds, model = word_world
    loc = {"split": "test", "calibration_split": "val", "max_images": 3, "n_thresholds": 12, "n_shards": 2}
    rows = localize_rows(ds, loc)
    kw = dict(n_draws=2, sampler=LogSNRSampler(0, 2, 3), seed=0, batch_size=64)
    maps = compute_maps(model, ds, rows, progress=False, **kw)  # the one-job run: every map, every mask at once
    ref = evaluate(rows, maps, ground_truth(ds, rows, model.resolution), calibration_split="val", seed=0,
                   n_thresholds=12)
    plan = shard_plan(rows, 2)
    assert [s["images"] for s in plan["shards"]] == [3, 3] and sum(s["rows"] for s in plan["shards"]) == len(rows)
    paths = [tmp_path / f"shard-{k}.npz" for k in range(2)]
    for k, path in enumerate(paths):
        localize_shard(model, ds, planned_shard(rows, k, plan, "plan.json"), path, n_thresholds=12, progress=False,
                       chunk_rows=2, **kw)
    joined = join_shards(paths, rows)
    for key in MAP_KEYS:
        np.testing.assert_array_equal(joined[key], maps[key], err_msg=key)
    got = evaluate_curves(rows, curves_of(joined), joined["whole"], calibration_split="val", seed=0,
                          thresholds=joined["thresholds"])
    for a, b in zip(got, ref):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    with pytest.raises(ValueError, match=r"hold \d+ rows, the data set's selection \d+; first difference"):
        join_shards(paths[:1], rows)
    with pytest.raises(ValueError, match="plan.json: plans"):
        planned_shard(rows.iloc[:-1], 0, plan, "plan.json")
    # killed while encoding the shard's third image: two images are kept, the rerun computes only the third
    from difflens.info import localize

    encoded, real = [], localize.encode_samples

    def encode(model, ds, sids):
        encoded.extend(sids)
        if len(encoded) == stop[0]:
            raise RuntimeError("killed")
        return real(model, ds, sids)

    stop = [3]
    monkeypatch.setattr(localize, "encode_samples", encode)
    shard = planned_shard(rows, 0, plan, "plan.json")
    with pytest.raises(RuntimeError, match="killed"):
        localize_shard(model, ds, shard, tmp_path / "r.npz", n_thresholds=12, progress=False, **kw)
    partial = tmp_path / "r.npz.partial"
    assert [str(r["sample_id"][0]) for r in read_records(partial)] == sorted(shard["sample_id"].unique())[:2]
    encoded.clear()
    stop[0] = None
    again = localize_shard(model, ds, shard, tmp_path / "r.npz", n_thresholds=12, progress=False, **kw)
    assert encoded == sorted(shard["sample_id"].unique())[2:] and not partial.exists()
    with np.load(paths[0]) as whole_run:
        assert sorted(whole_run.files) == sorted(again)
        for key in again:
            np.testing.assert_array_equal(again[key], whole_run[key], err_msg=key)
    # a data set without masks (COCO-WL): maps only, no curves and no thresholds to choose
    maskless = copy.copy(ds)
    maskless.objects = None
    first = rows[rows["sample_id"] == rows["sample_id"].iloc[0]]
    localize_shard(model, maskless, first, tmp_path / "m.npz", n_thresholds=12, progress=False, **kw)
    only_maps = join_shards([tmp_path / "m.npz"], first)
    assert sorted(only_maps) == sorted(["row", "sample_id", "word", "attention_itd", *MAP_KEYS])
    np.testing.assert_array_equal(only_maps["cmi"], maps["cmi"][:len(first)])


def test_localization_memory_grows_with_the_shard_not_the_data_set(tmp_path):
    def plan(*shards: tuple[int, int]) -> Path:
        path = tmp_path / f"plan-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"n_rows": sum(r for r, _ in shards), "shards": [
            {"rows": rows, "max_words_per_caption": words} for rows, words in shards]}))
        return path

    two = plan((200, 3), (400, 3), (200, 6))
    base = memory.shard_held_mb(two, 0, 512, 100, 50)
    assert memory.shard_held_mb(two, 1, 512, 100, 50) - base == pytest.approx(200 * 2 * memory.row_bytes(512, 50) / 1e6)
    assert memory.shard_held_mb(two, 2, 512, 100, 50) > base  # more words in a caption: more estimator tensors
    assert memory.row_bytes(512, 50) < memory.row_bytes(512, 100) < memory.row_bytes(768, 100)
    assert memory.iou_step_bytes(512, 16) < memory.iou_step_bytes(512, 32) < memory.iou_step_bytes(768, 32)
    # COCO-IT (6,973 rows at 512 px, 50 thresholds) in a single shard: well under the 8 GB the one job asked for,
    # where the dense (N, 50, 512, 512) predictions, masks and their intersection took ~3 x 91 GB
    coco = plan((6973, 4))
    assert memory.shard_held_mb(coco, 0, 512, 100, 50) < 2000 < 3 * 6973 * 50 * 512 ** 2 / 1e6
    rows_mb = memory.collect_held_mb(coco, 512, 50)
    assert memory.collect_held_mb(plan((6973, 4), (6973, 4)), 512, 50) == pytest.approx(2 * rows_mb)
    assert memory.collect_held_mb(coco, 512, 100) > rows_mb
    # the plan the requests read: rows, images and the most words of a caption per shard
    (tmp_path / "plan.json").write_text(json.dumps(shard_plan(pd.DataFrame(
        {"sample_id": ["a", "a", "b", "c"], "caption": ["x", "x", "y", "z"]}), 2)))
    made = memory.read_plan(tmp_path / "plan.json")
    assert made["n_rows"] == 4 and [s["rows"] for s in made["shards"]] == [3, 1]
    assert [(s["images"], s["max_words_per_caption"]) for s in made["shards"]] == [(2, 2), (1, 1)]


def test_daam_map_drops_the_lowest_resolution_and_clamps():
    maps = {"hi": torch.ones(1, 2, 8, 8), "mid": torch.full((1, 2, 4, 4), 3.0), "low": torch.full((1, 2, 2, 2), 99.)}
    out = daam_map(maps, (8, 8))
    assert out.shape == (1, 2, 8, 8)
    np.testing.assert_allclose(out.numpy(), 2.0, rtol=1e-5)
    neg = daam_map({"a": -torch.ones(1, 1, 4, 4)}, (8, 8))  # a single resolution is kept; negatives clamp to 0
    assert float(neg.min()) == 0.0


def test_ode_inversion_reconstructs_and_heun_is_more_accurate():
    model = GaussianToyModel(V, 0.5)
    x, y = model.sample(4, seed=6)
    prompts = [f"y={v}" for v in y]
    errs = {}
    for solver in ("ddim", "heun"):
        grid = torch.linspace(0, 999, 21).round().long()
        noise = ode_path(model, x, prompts, grid, solver)
        back = ode_path(model, noise, prompts, grid.flip(0), solver)
        errs[solver] = float(((back - x) ** 2).mean() / (x ** 2).mean())
    assert errs["heun"] < errs["ddim"] < 0.05, errs


def test_swaps_pearson_and_bootstrap():
    assert swap_word("a red circle above a redder square", "red", {"red": "blue"}) == "a blue circle above a redder square"
    assert swap_word("a red circle", "circle", {"red": "blue"}) is None
    a = np.arange(10.0)
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0) and np.isnan(pearson(a, np.ones(10)))
    lo, hi = bootstrap_ci(10, lambda i: a[i].mean(), 500, seed=0)
    half = 1.96 * a.std() / np.sqrt(10)  # the mean of 10 resampled values: normal enough, sd = population sd / sqrt 10
    assert lo == pytest.approx(a.mean() - half, abs=0.25) and hi == pytest.approx(a.mean() + half, abs=0.25)


def test_mask_baselines_and_their_paired_differences():
    """The intervention table: every map, every mask baseline, every map minus every baseline; a map identical to a
    baseline differs from it by exactly 0 in every resample (the pairing: independent resamples would spread the
    difference around 0); a difference row's interval is the percentile interval of the per-resample differences;
    no mask rows when no baseline is given."""
    rng = np.random.default_rng(0)
    n = 12
    change, noise = rng.gamma(1.0, size=(n, 4, 4)), rng.normal(size=(n, 4, 4))
    edits = pd.DataFrame({"edit": ["omit"] * n})
    preds = {"cmi": change.copy(), "attention_itd": noise, "object_mask": change.copy(),
             "all_objects_mask": noise + change}
    table = correlations(edits, change, preds, n_boot=200, seed=0).set_index(["predictor", "level"])
    assert list(dict.fromkeys(table.index.get_level_values(0))) == [
        "cmi", "attention_itd", "object_mask", "all_objects_mask", "cmi-object_mask", "cmi-all_objects_mask",
        "attention_itd-object_mask", "attention_itd-all_objects_mask"]
    cols = ["pearson", "ci_low", "ci_high"]
    for level in ("image", "pixel"):
        assert table.loc[("cmi", level), cols].tolist() == pytest.approx([1, 1, 1])
        assert table.loc[("cmi-object_mask", level), cols].tolist() == [0, 0, 0]
    d = table.loc[("attention_itd-all_objects_mask", "pixel")]
    assert d["pearson"] == pytest.approx(table.loc[("attention_itd", "pixel"), "pearson"]
                                         - table.loc[("all_objects_mask", "pixel"), "pearson"])
    resamples = np.random.default_rng(0).integers(0, n, (200, n))  # bootstrap_ci's resamples, one per row
    per_item = {k: np.array([pearson(c.ravel(), m.ravel()) for c, m in zip(change, preds[k])])
                for k in ("attention_itd", "all_objects_mask")}
    diffs = [per_item["attention_itd"][i].mean() - per_item["all_objects_mask"][i].mean() for i in resamples]
    assert [d["ci_low"], d["ci_high"]] == pytest.approx(np.percentile(diffs, [2.5, 97.5]).tolist())
    plain = correlations(edits, change, {"cmi": change, "attention_itd": noise}, n_boot=200, seed=0)
    assert set(plain["predictor"]) == {"cmi", "attention_itd"}


def test_mask_baseline_maps_keep_the_masks_area(word_world):
    """The latent-grid masks (area shares) sum to the masks' pixels on the input grid over the pixels per latent
    pixel; all objects cover the word's own; no baselines, and the reason, without objects.csv or with an edited
    word that names no object."""
    from difflens.info.inputs import preprocess_mask, word_rows

    ds, model = word_world
    edits = edits_of(word_rows(ds, ["test"], 4, need_masks=True), {}, 3)
    res, grid = model.resolution, (8, 8)
    masks = mask_maps(ds, edits, res, grid)
    for k, r in enumerate(edits.itertuples()):
        for name, objects in (("object_mask", r.objects), ("all_objects_mask", None)):
            pixels = preprocess_mask(ds.object_mask(r.sample_id, objects), res).sum()
            assert masks[name][k].sum() * (res // grid[0]) ** 2 == pytest.approx(pixels, abs=1e-6), (k, name)
    assert (masks["all_objects_mask"] >= masks["object_mask"]).all()
    assert why_no_masks(ds, edits) == ""
    maskless = copy.copy(ds)
    maskless.objects = None
    assert mask_maps(maskless, edits, res, grid) == {} and "has no objects.csv" in why_no_masks(maskless, edits)
    unnamed = edits.assign(objects=[""] + list(edits["objects"].iloc[1:]))
    assert mask_maps(ds, unnamed, res, grid) == {}
    assert why_no_masks(ds, unnamed).startswith(f"1 of {len(edits)} edits name no object in words.csv (the first: "
                                                f"sample {edits['sample_id'].iloc[0]!r}, word "
                                                f"{edits['word'].iloc[0]!r})")


def test_bad_word_rows_name_the_sample_and_word(tmp_path):
    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.info.aro import select_items
    from difflens.info.inputs import word_rows

    generate(tmp_path, ShapesConfig(n_images=40), progress=False)
    ds = Dataset.load(tmp_path)
    assert set(word_rows(ds, ["test"], 0, need_masks=True)["word_type"]) <= {"object", "colour", "relation"}
    first = ds.words.index[0]
    sid, caption = ds.words.loc[first, "sample_id"], ds.words.loc[first, "caption"]
    split = ds.samples.set_index("sample_id").loc[sid, "split"]
    cases = [("word", "zebra", f"word 'zebra' is not in its caption {caption!r}"),
             ("caption", "", "has an empty caption for word"),
             ("objects", "", "has no mask (empty objects in words.csv)")]
    for column, value, message in cases:
        bad = Dataset.load(tmp_path)
        bad.words.loc[first, column] = value
        with pytest.raises(ValueError, match=rf"sample '{sid}'.*" + message.replace("(", r"\(").replace(")", r"\)")):
            word_rows(bad, [split], 0, need_masks=True)
    bad = Dataset.load(tmp_path)
    bad.aro.loc[bad.aro.index[0], "negatives"] = json.dumps([""])
    with pytest.raises(ValueError, match=rf"aro.csv row 0 \(sample '{bad.aro.iloc[0]['sample_id']}'\) has an empty"):
        select_items(bad.aro, bad.samples, bad.samples.set_index("sample_id").loc[bad.aro.iloc[0]["sample_id"],
                                                                                   "split"], 0, "shapes")
