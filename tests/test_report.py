"""The figure stage's library (difflens.report) on small hand-made tables: the numbers each paper item tabulates, the
selections it makes, the browser's per-latent data, the summary page, and the errors for missing inputs."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difflens.report import attributes, browser, information, paper, revelio
from difflens.report.catalog import ITEMS, UnknownItem, item
from difflens.report.inputs import MissingInput, producer, require
from difflens.report.style import Palette, note_figure
from difflens.report.summary import headline_rows, write_html, write_markdown

ROOT = Path(__file__).resolve().parents[1]
PALETTE = Palette(models=["shapes", "dit"], layers=["mid_block", "up_blocks.1", "transformer_blocks.0",
                                                    "transformer_blocks.1"], timesteps=[25, 500])


def control_columns(control: str, purity: float, auroc: float) -> dict:
    """A control's columns of an SAE summary row (collect_sae): purity, sigma_label, and the same AUROC for every
    indicator."""
    return {f"{control}_purity": purity, f"{control}_sigma_label": 2 - purity, f"{control}_auroc:colour=red": auroc,
            f"{control}_auroc:colour=blue": auroc, f"{control}_auroc:shape=circle": auroc}


def sae_summary() -> pd.DataFrame:
    rows = []
    for model, layers in (("shapes", ["up_blocks.1", "mid_block"]), ("dit", ["transformer_blocks.1",
                                                                           "transformer_blocks.0"])):
        for t in (500, 25):
            for j, layer in enumerate(layers):
                purity = 0.3 + 0.1 * j + (0.2 if t == 25 else 0) + (0.05 if model == "dit" else 0)
                rows.append({"model": model, "dataset": "shapes", "run": "r", "input": "pooled", "layer": layer,
                             "timestep": t, "sigma_label": 2 - purity, "purity": purity, "random_sigma_mean": 2.5,
                             "random_sigma_p5": 2.2, "random_sigma_p95": 2.8, "random_purity_mean": 0.2,
                             "random_purity_p5": 0.1, "random_purity_p95": 0.3, "live_latents": 10,
                             "null_purity_mean_p5": 0.18, "null_purity_mean_p95": 0.22,
                             "null_purity_p_value": 0.001 if purity > 0.4 else 0.3, "better_than_random": purity > 0.4,
                             "null_purity_beyond_share": 0.25, "null_purity_beyond_chance": 0.016,
                             "n_latents": 16, "split": "train", "auroc:colour=red": 0.9 - 0.1 * j,
                             "auroc:colour=blue": 0.7, "auroc:shape=circle": 0.6,
                             **control_columns("untrained", purity - 0.1, 0.6),
                             **control_columns("random_directions", purity - 0.15, 0.55)})
    return pd.DataFrame(rows)


def test_sae_table_orders_layers_as_configured_and_aggregates_models():
    s = sae_summary()
    by_layer = revelio.sae_table(s, "layer", palette=PALETTE)
    first = by_layer[(by_layer["model"] == "shapes") & (by_layer["timestep"] == 25)]
    assert list(first["layer"]) == ["mid_block", "up_blocks.1"]  # config order, not the summary's
    by_t = revelio.sae_table(s, "timestep", palette=PALETTE)
    assert list(by_t["timestep"][:2]) == [25, 500] and by_t["layer"].iloc[0] == "mid_block"
    by_model = revelio.sae_table(s, "model")
    row = by_model[(by_model["model"] == "shapes") & (by_model["timestep"] == 25)].iloc[0]
    assert row["purity"] == pytest.approx(np.mean([0.5, 0.6])) and row["purity_min"] == pytest.approx(0.5)
    assert row["purity_max"] == pytest.approx(0.6) and row["purest_layer"] == "mid_block" and row["layers"] == 2
    # each SAE's controls stand beside it: per row, and as the mean over a model's layers
    assert {"untrained_purity", "random_directions_sigma_label"} <= set(by_layer.columns)
    assert row["untrained_purity"] == pytest.approx(np.mean([0.4, 0.5]))
    # the null of the mean stands beside each SAE, and a model's share of SAEs that beat it
    assert by_layer["better_than_random"].tolist() == (by_layer["purity"] > 0.4).tolist()
    assert row["better_than_random"] == 1.0 and row["null_purity_mean_p95"] == pytest.approx(0.22)
    dit = revelio.sae_table(s, "dit", dit_models=["dit"])
    assert set(dit["model"]) == {"dit"} and list(dit["block"][:2]) == [0, 1]
    with pytest.raises(revelio.ReportError, match="no SAE of a DiT model"):
        revelio.sae_table(s, "dit", dit_models=[])
    with pytest.raises(revelio.ReportError, match="axis 'depth'"):
        revelio.sae_table(s, "depth")


def test_purest_rows_survive_undefined_purity():
    t = pd.DataFrame({"model": ["a", "a", "b"], "purity": [np.nan, np.nan, 0.4], "layer": ["x", "y", "z"]})
    assert list(t.loc[revelio.argmax_rows(t, ["model"], "purity"), "layer"]) == ["x", "z"]


def test_top_image_grids_pick_the_axis():
    s = sae_summary()
    by_layer = revelio.select_grids(s, "layer")
    assert set(by_layer["timestep"]) == {25} and len(by_layer) == 4  # first timestep, every layer of both models
    by_t = revelio.select_grids(s, "timestep")
    assert set(zip(by_t["model"], by_t["layer"])) == {("shapes", "mid_block"), ("dit", "transformer_blocks.0")}
    by_model = revelio.select_grids(s, "model")
    assert len(by_model) == 2 and set(by_model["timestep"]) == {25}


def accuracy() -> pd.DataFrame:
    rows = []
    for clf in ("diffc", "linear_probe"):
        for layer, val, test in (("mid_block", 0.9, 0.5), ("up_blocks.1", 0.6, 0.95)):
            for t in (25, 500):
                rows.append({"model": "shapes", "dataset": "shapes", "layer": layer, "timestep": t, "target": "label",
                             "classifier": clf, "val_accuracy": val - 0.01 * (t == 500), "test_accuracy": test,
                             "n_classes": 4, "majority_accuracy": 0.25})
    rows.append({"model": "shapes", "dataset": "shapes", "layer": "mid_block", "timestep": 25, "target": "colour",
                 "classifier": "linear_probe", "val_accuracy": 0.8, "test_accuracy": 0.7, "n_classes": 4,
                 "majority_accuracy": 0.4})
    rows.append({"model": "clip", "dataset": "shapes", "layer": "image", "timestep": np.nan, "target": "label",
                 "classifier": "linear_probe", "val_accuracy": 0.7, "test_accuracy": 0.6, "n_classes": 4,
                 "majority_accuracy": 0.25})
    return pd.DataFrame(rows)


def test_accuracy_grid_shows_diffc_alone_and_fails_without_it(tmp_path):
    """Table 3 (Diff-C accuracy, layer x timestep) is the 4 Diff-C rows; with none, a ReportError naming the
    classifiers there are, not the probes under Diff-C's title."""
    acc = accuracy()
    table = revelio.plot_accuracy_grid(acc, tmp_path / "t3.png", tmp_path / "t3.pdf", "Table 3", PALETTE)
    assert list(table["classifier"]) == ["diffc"] * 4
    assert table["test_accuracy"].tolist() == [0.5, 0.5, 0.95, 0.95]  # mid_block, up_blocks.1 at t = 25, 500
    with pytest.raises(revelio.ReportError, match=r"no Diff-C rows .*\['linear_probe'\]"):
        revelio.plot_accuracy_grid(acc[acc["classifier"] != "diffc"], tmp_path / "p.png", tmp_path / "p.pdf",
                                   "Table 3", PALETTE)


def test_best_by_validation_selects_on_val_not_test():
    best = revelio.best_by_validation(accuracy())
    d = best[(best["classifier"] == "diffc") & (best["target"] == "label")].iloc[0]
    assert (d["layer"], d["timestep"], d["test_accuracy"]) == ("mid_block", 25, 0.5)  # higher val, lower test
    assert best[best["model"] == "clip"]["test_accuracy"].tolist() == [0.6]  # an external baseline keeps its row
    err = revelio.with_stderr(accuracy(), {"shapes": 100})
    assert err["test_stderr"].iloc[0] == pytest.approx(np.sqrt(0.5 * 0.5 / 100))
    by_layer = revelio.accuracy_table(accuracy(), "layer")  # baselines have no layer x timestep: not on this axis
    assert "clip" not in set(by_layer["model"]) and by_layer["timestep"].dtype.kind == "i"


def test_readability_puts_classifiers_and_sae_on_one_scale():
    table = attributes.readability_table(accuracy(), sae_summary())
    probe = table[(table["source"] == "linear_probe") & (table["attribute"] == "colour")].iloc[0]
    # the floor is the test split's majority rate (0.4 for this unbalanced target), not 1 / n_classes (0.25)
    assert probe["chance"] == 0.4 and probe["readability"] == pytest.approx((0.7 - 0.4) / 0.6)
    sae = table[(table["source"] == "sae") & (table["attribute"] == "colour") & (table["layer"] == "up_blocks.1")]
    assert sae["score"].iloc[0] == pytest.approx((0.9 + 0.7) / 2)  # mean over the attribute's values
    # the SAE's floor is its untrained control read the same way (0.6 here), not 0.5
    assert sae["chance"].iloc[0] == pytest.approx(0.6)
    assert sae["readability"].iloc[0] == pytest.approx(((0.9 + 0.7) / 2 - 0.6) / 0.4)
    circle = table[(table["source"] == "sae") & (table["attribute"] == "shape")]
    assert (circle["readability"] == 0).all()  # 0.6 against a control of 0.6: nothing learned
    assert set(table["attribute"]) == {"label", "colour", "shape"}
    with pytest.raises(revelio.ReportError, match="untrained-control column"):
        attributes.readability_table(accuracy(), sae_summary().drop(columns="untrained_auroc:shape=circle"))
    with pytest.raises(revelio.ReportError, match="majority_accuracy"):
        attributes.readability_table(accuracy().drop(columns="majority_accuracy"), sae_summary())


def test_aro_and_localization_tables():
    aro = pd.DataFrame([
        {"kind": "relation", "score": s, "metric": m, "group": g, "n": 10, "accuracy": a, "stderr": e}
        for s, a in (("i_s", 0.9), ("i_o", 0.3), ("err", 0.8))
        for m, g, e in (("accuracy", np.nan, 0.05), ("group", "left", np.nan), ("macro", np.nan, np.nan))
    ]).assign(model="shapes", dataset="shapes")
    t1 = information.aro_table(aro, per_group=False)
    acc = t1[t1["metric"] == "accuracy"].iloc[0]
    assert (acc["i_s"], acc["i_o"], acc["err"], acc["i_s_stderr"], acc["n"]) == (0.9, 0.3, 0.8, 0.05, 10)
    t2 = information.aro_table(aro, per_group=True)
    assert list(t2["group"]) == ["left"] and t2["i_o"].iloc[0] == 0.3
    assert t2["i_o_stderr"].iloc[0] == pytest.approx(np.sqrt(0.3 * 0.7 / 10))  # binomial, where aro.csv has none
    loc = pd.DataFrame([{"word_type": "all", "n": 5, "threshold_source": "val split", "whole_image": 0.1,
                         "cmi@50": 0.35, "cmi@50:oracle": 0.38, "cmi": 0.4, "cmi:oracle": 0.45,
                         "attention_itd": 0.5, "attention_itd:oracle": 0.5, "attention_ddim": 0.3,
                         "attention_ddim:oracle": 0.33, "draws": 100, "ddim_steps": 50}])
    long = information.localization_table(loc.assign(model="m", dataset="d"))
    cmi = long[(long["method"] == "cmi") & (long["draws"] == "")].set_index("threshold")["miou"]
    assert cmi["held-out"] == 0.4 and cmi[information.ORACLE] == 0.45
    assert long[long["method"] == "whole_image"]["threshold"].tolist() == ["none"]
    # the paper's Table 3 beside the oracle column of the same method at the same step count (draws; DDIM steps)
    ident = {"models": {"m": {"source": "stabilityai/stable-diffusion-2-1-base", "paper": "sd21"}},
             "datasets": {"d": {"source": "coco_it", "protocol": ""}}}
    keyed = paper.compare_keyed(long, paper.load_numbers(), ident, "paper_key", "steps", "miou")
    got = keyed.set_index(["method", "draws", "threshold"])
    assert got.loc[("cmi", "", information.ORACLE), "paper_value"] == pytest.approx(0.3324)  # 100 draws
    assert got.loc[("cmi", "50", information.ORACLE), "paper_value"] == pytest.approx(0.3231)
    assert got.loc[("attention_ddim", "", information.ORACLE), "paper_value"] == pytest.approx(0.3452)  # 50 steps
    assert got.loc[("attention_itd", "", information.ORACLE), "paper_value"] == pytest.approx(0.4271)
    assert got.loc[("whole_image", "", "none"), "paper_value"] == pytest.approx(0.1494)
    assert got.loc[("cmi", "", "held-out"), "paper_differs"] == "no paper number for this row"
    other = paper.compare_keyed(long.assign(steps=24), paper.load_numbers(), ident, "paper_key", "steps", "miou")
    assert other.set_index(["method", "draws", "threshold"]).loc[("cmi", "", information.ORACLE),
                                                                 "paper_differs"] == "24 steps (the paper's: 50, 100, 200)"


def test_map_rows_prefer_one_word_of_each_type():
    maps = {"sample_id": np.array(["a", "a", "a", "a", "b"]),
            "word_type": np.array(["object", "object", "colour", "relation", "object"])}
    rows = information.pick_map_rows(maps, n_images=2, words=3)
    assert rows[:3] == [0, 2, 3] and rows[3:] == [4]


def test_latent_pages_quantiles_histogram_and_top_images():
    rng = np.random.default_rng(0)
    scores = np.zeros((50, 3), np.float32)
    scores[:20, 1] = np.arange(1, 21)  # latent 1 fires on 20 images with activations 1..20
    scores[:, 2] = rng.random(50) + 0.1
    table = pd.DataFrame({"latent": [1, 2], "frequency": [0.4, 1.0], "mean_activation": [4.2, 0.6],
                          "purity": [0.5, 0.3], "sigma": [1.0, 1.2], "best_attribute": ["colour=red", np.nan],
                          "auroc": [0.9, np.nan]})
    pages = browser.latent_pages(scores, table, top=3, quantiles=[0.0, 0.5, 1.0], bins=4, max_latents=5)
    assert [p["id"] for p in pages] == [2, 1]  # the most frequent first
    p1 = pages[1]
    assert p1["top"] == [19, 18, 17] and p1["topAct"] == [20.0, 19.0, 18.0] and p1["fired"] == 20
    assert [q["act"] for q in p1["quant"]] in ([1.0, 10.0, 20.0], [1.0, 11.0, 20.0])
    assert sum(p1["hist"]["counts"]) == 20 and p1["hist"]["edges"][0] == 1.0 and p1["hist"]["edges"][-1] == 20.0
    assert pages[0]["attr"] == "" and pages[0]["auroc"] is None
    assert len(browser.latent_pages(scores, table, top=3, quantiles=[0.5], bins=4, max_latents=1)) == 1


def test_pca_view_and_heat_map_encoding():
    x = np.random.default_rng(1).normal(size=(100, 8))
    x[:, 0] *= 10
    pick, xy = browser.pca_view(x, max_points=30, seed=3)
    pick2, xy2 = browser.pca_view(x, max_points=30, seed=3)
    assert len(pick) == 30 and (pick == pick2).all() and np.allclose(xy, xy2)
    assert xy.min() == pytest.approx(0) and xy.max() == pytest.approx(1)
    assert abs(np.corrcoef(xy[:, 0], x[pick, 0])[0, 1]) > 0.95  # the first axis is the dominant direction
    raw = np.frombuffer(base64.b64decode(browser.b64_uint8(np.array([[0.0, 1.0], [2.0, 4.0]]))), np.uint8)
    assert raw.tolist() == [0, 64, 128, 255]
    assert set(np.frombuffer(base64.b64decode(browser.b64_uint8(np.zeros(3))), np.uint8)) == {0}


def test_missing_input_names_the_rule_that_makes_it(tmp_path):
    path = tmp_path / "results" / "sae" / "shapes" / "shapes" / "summary.csv"
    with pytest.raises(MissingInput, match=r"rule collect_sae makes it: run `snakemake .*summary\.csv`"):
        require(path, "Revelio Table 2a")
    assert producer("results/info/m/d/localization_maps.npz") == "collect_localization"
    assert producer("results/classify/m/d/pca/t25/mid_block.png") == "pca_views"
    assert producer("results/elsewhere.txt") is None
    with pytest.raises(UnknownItem, match="no paper item 'revelio/table9'"):
        item("revelio/table9")


def test_summary_marks_the_shapes_world_beside_the_papers(tmp_path):
    aro = tmp_path / "info" / "shapes" / "shapes" / "aro.csv"
    aro.parent.mkdir(parents=True)
    pd.DataFrame([{"kind": "relation", "score": "i_o", "metric": "accuracy", "group": "", "n": 48,
                   "accuracy": 0.27, "stderr": 0.06},
                  {"kind": "relation", "score": "i_o", "metric": "macro", "group": "", "n": 48,
                   "accuracy": 0.31, "stderr": np.nan}]).to_csv(aro, index=False)
    rows = headline_rows({"aro": [str(aro)]}, {"shapes": "shapes"})
    r = rows.iloc[0]
    assert r["this run"] == "27.0 (macro 31.0), n=48" and r["paper"] == "-"  # not the paper's model: no number
    assert r["paper source"].startswith("differs: model (no hub id) is not the paper's (stabilityai/")
    assert r["model kind"] == "shapes world (not Stable Diffusion)" and r["dataset"] == "shapes"
    write_markdown(rows, tmp_path / "s.md")
    assert "not Stable Diffusion" in (tmp_path / "s.md").read_text()
    # the same table from the paper's model: its number beside ours
    sd21 = {"models": {"shapes": {"source": "stabilityai/stable-diffusion-2-1-base", "paper": "sd21"}}}
    paired = headline_rows({"aro": [str(aro)]}, {"shapes": "sd"}, sd21)
    r = paired.iloc[0]
    assert r["paper"] == "69.1% (aro_vg_relation, 100 steps)"
    assert r["paper source"] == "Kong et al. Table 1, VG-R (macro), Info. (Ours, Logistic)"
    write_html(paired, tmp_path / "s.html")
    assert "<td>69.1% (aro_vg_relation, 100 steps)</td>" in (tmp_path / "s.html").read_text()
    # Table 3 only beside the oracle column at the paper's step counts
    loc = tmp_path / "info" / "shapes" / "coco" / "localization.csv"
    loc.parent.mkdir(parents=True)
    pd.DataFrame([{"word_type": "all", "n": 9, "threshold_source": "2-fold cross-fit", "whole_image": 0.15,
                   "cmi": 0.3, "cmi:oracle": 0.33, "draws": 24, "ddim_steps": 50}]).to_csv(loc, index=False)
    lines = headline_rows({"localization": [str(loc)]}, {"shapes": "sd"}, sd21).set_index("quantity")["paper"]
    assert lines["mIoU % (CMI, all words, held-out threshold)"] == "-"
    assert lines["mIoU % (whole image, all words)"] == "14.94% (coco_it)"
    assert lines["mIoU % (CMI, all words, best threshold of the paper's grid on the test rows, 24 steps)"] == "-"
    # Table 4 only beside edits made as the public code made them (Heun, 100 steps, the word replaced by "_")
    iv = tmp_path / "info" / "shapes" / "coco" / "intervention.csv"
    made = {"edit": "omit", "predictor": "cmi_s", "level": "image", "n": 9, "pearson": 0.3, "ci_low": 0.1,
            "ci_high": 0.5, "steps": 100, "solver": "heun", "omit": "placeholder"}
    for omit, paper_value in (("placeholder", "0.34 (coco100_it, 100 steps)"), ("delete", "-")):
        pd.DataFrame([{**made, "omit": omit}]).to_csv(iv, index=False)
        got = headline_rows({"intervention": [str(iv)]}, {"shapes": "sd"}, sd21).iloc[0]
        assert got["paper"] == paper_value
    assert got["paper source"] == "differs: omit delete (the paper's: placeholder)"


def test_summary_shows_the_sae_controls_and_says_when_a_table_has_no_masks(tmp_path):
    sae = tmp_path / "sae" / "shapes" / "shapes" / "summary.csv"
    sae.parent.mkdir(parents=True)
    sae_summary().to_csv(sae, index=False)
    loc = tmp_path / "info" / "shapes" / "coco" / "localization.csv"
    loc.parent.mkdir(parents=True)
    loc.write_text("word_type,n,threshold_source\n")  # collect_localization's table without masks
    rows = headline_rows({"sae": [str(sae)], "localization": [str(loc)]}, {"shapes": "shapes", "dit": "dit"})
    purest = rows[rows["quantity"].str.startswith("purest SAE")].set_index("model")["this run"]
    # shapes' purest SAE: mid_block at t=25, purity 0.6; its untrained control 0.5, random directions 0.45
    assert purest["shapes"] == ("0.60 / 1.40 (0.50 / 1.50; 0.45 / 1.55; 0.20 / 2.50) at mid_block, t=25; null of "
                                "the mean: 95th pct 0.22, p = 0.001; 25% of latents above the single-set 95th pct "
                                "(chance 1.6%)")
    beats = rows[rows["quantity"].str.startswith("SAEs whose mean purity beats")].set_index("model")["this run"]
    assert beats["shapes"] == "2 of 4"  # purity > 0.4: the two layers at t = 25
    verdict = rows[rows["quantity"] == "trained SAEs against their untrained controls"].set_index("model")
    assert verdict.loc["shapes", "this run"].startswith("purity higher at 4 of 4 (mean difference +0.100)")
    no_masks = rows[rows["section"] == "Information: localization"]
    assert no_masks["this run"].tolist() == ["none: the data set has no masks (maps only)"]
    # the images extraction could not read, per (model, data set), named with their reasons
    skipped = tmp_path / "latents" / "shapes" / "shapes" / "skipped.csv"
    skipped.parent.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a", "b"], "reason": ["truncated", "not an image"]}).to_csv(skipped, index=False)
    clean = tmp_path / "latents" / "shapes" / "other" / "skipped.csv"
    clean.parent.mkdir(parents=True)
    clean.write_text("sample_id,reason\n")
    data = headline_rows({"skipped": [str(skipped), str(clean)]}, {"shapes": "shapes"}).set_index("dataset")
    assert data.loc["shapes", "this run"] == "2: a (truncated); b (not an image)"
    assert data.loc["other", "this run"] == "none" and data.loc["other", "model"] == "shapes"


def test_readme_lists_every_paper_item_with_its_target_and_config():
    """Every catalog item has a row in the README's table that names the item, its config and its target under
    that config's `results` folder (tests/test_documented_commands.py dry-runs these pairs)."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    for key, it in ITEMS.items():
        results = yaml.safe_load((ROOT / it.config).read_text())["results"].rstrip("/")
        target = f"`{results}/figures/{key}.png`"
        line = next((l for l in readme.splitlines() if l.startswith("|") and target in l), None)
        assert line, f"README does not list {key} as {target}"
        assert it.paper in line and f"`{it.config}`" in line, line
    assert re.search(r"results/browser/index\.html", readme) and "results/summary.md" in readme


def test_heat_map_is_the_latents_encoder_response_at_each_position():
    import torch

    from difflens.sae.model import KSAE, SAEConfig

    sae = KSAE(SAEConfig(d=6, n_latents=10, k=2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.encoder.bias.normal_()
    x = torch.randn(12, 6)
    for j in (0, 7):
        assert torch.allclose(browser.latent_response(sae, x, j), sae.pre_activations(x)[:, j], atol=1e-5)
    maps = {"a": np.random.default_rng(0).normal(size=(6, 4, 4)).astype(np.float32)}
    page = {"id": 3, "top": [0]}
    browser.heat_maps(sae, maps, [page], ["a"], max_side=2)
    assert page["grid"] == [2, 2] and len(base64.b64decode(page["maps"][0])) == 4
    full = browser.latent_response(sae, torch.from_numpy(maps["a"].reshape(6, 16).T.copy()), 3).numpy()
    assert page["mapMax"] == pytest.approx(full.reshape(4, 4).reshape(2, 2, 2, 2).mean((1, 3)).max(), rel=1e-5)
    assert browser.pool_to(np.ones((1, 5, 3)), 2).shape == (1, 2, 1)


def test_runs_without_masks_or_groups_get_a_note_not_a_crash(tmp_path, monkeypatch):
    """An empty localization table and an ARO table without groups: each figure is a note (its title and the
    reason), written as a PNG that is its PDF's page."""
    from figure_check import assert_png_is_pdf_page

    notes = []

    def noted(png, pdf, title, text):
        notes.append((title, text))
        note_figure(png, pdf, title, text)

    monkeypatch.setattr(information, "note_figure", noted)
    empty = pd.DataFrame(columns=["word_type", "n", "threshold_source"]).assign(model="m", dataset="coco_wl")
    long = information.localization_table(empty)
    assert long.empty
    information.plot_localization(long, tmp_path / "t3.png", tmp_path / "t3.pdf", "Table 3")
    aro = pd.DataFrame([{"kind": "order", "score": "i_o", "metric": "accuracy", "group": np.nan, "n": 4,
                         "accuracy": 0.5, "stderr": 0.25}]).assign(model="m", dataset="d")
    groups = information.aro_table(aro, per_group=True)
    assert groups.empty
    information.plot_aro(groups, True, tmp_path / "t2.png", tmp_path / "t2.pdf", "Table 2")
    assert [title for title, _ in notes] == ["Table 3", "Table 2"]
    assert "object masks" in notes[0][1] and "min_group" in notes[1][1]
    for name in ("t3", "t2"):
        assert_png_is_pdf_page(tmp_path / f"{name}.png", tmp_path / f"{name}.pdf")


def test_sample_ids_stay_text(tmp_path):
    from difflens.report.inputs import read_csv

    (tmp_path / "items.csv").write_text("sample_id,score\n000000397133,1.5\n")
    assert read_csv(tmp_path / "items.csv")["sample_id"].tolist() == ["000000397133"]
