"""The steering items (catalog family ``steer``), the summary page's steering rows and the browser's steering strips,
from a small hand-made steered SAE's folder (what rule steer_latents writes: chosen, effects, correlations,
images.npz) of two latents under three edits."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from difflens.report import browser, steering
from difflens.report.catalog import ITEMS
from difflens.report.inputs import producer
from difflens.report.items import render
from difflens.report.revelio import ReportError
from difflens.report.style import Palette
from difflens.report.summary import headline_rows
from figure_check import assert_png_is_pdf_page

LATENTS = {5: "red", 9: "blue"}
EDITS = ("add=+2", "add=+4", "ablate")
#: success and off-target rate of each (latent, edit)
RATES = {(5, "add=+2"): (0.25, 0.0), (5, "add=+4"): (0.75, 0.5), (5, "ablate"): (0.0, 0.25),
         (9, "add=+2"): (0.5, 0.25), (9, "add=+4"): (0.5, 0.0), (9, "ablate"): (np.nan, 0.0)}
SAE = {"model": "shapes", "dataset": "shapes", "run": "r", "input": "pooled", "timestep": 25, "layer": "up_blocks.1"}


def colour(i: int, j: int = 0) -> np.ndarray:
    """Three 8 px images of one colour each, told apart by ``i`` (edit) and ``j`` (latent)."""
    return np.stack([np.full((8, 8, 3), (10 * i + j, 40 * k, 200), np.uint8) for k in range(3)])


def steer_folder(root, shapes: bool = True):
    """A steered SAE's folder under ``root``/steer/...; ``shapes`` False: effects without the read-back."""
    folder = root / "steer" / SAE["model"] / SAE["dataset"] / SAE["run"] / SAE["input"] / "t25" / SAE["layer"]
    folder.mkdir(parents=True)
    pd.DataFrame({"latent": list(LATENTS), "word": list(LATENTS.values()),
                  "attribute": [f"colour={w}" for w in LATENTS.values()], "auroc": [0.9, 0.8]}).to_csv(
        folder / "chosen.csv", index=False)
    effects, corr, images = [], [], {"inverted/unedited": colour(0)}
    for j, word in LATENTS.items():
        for e, edit in enumerate(EDITS):
            kind, _, value = edit.partition("=")
            row = {"source": "inverted", "latent": j, "word": word, "edit": edit, "kind": kind,
                   "value": float(value or 0), "mean_change": 100.0 * (e + 1) + j}
            if shapes:
                success, off = RATES[(j, edit)]
                row.update(n_images=4, n_eligible=0 if np.isnan(success) else 4, success_rate=success,
                           off_target_rate=off, count_rate=off, other_rate=0.0, position_rate=0.0,
                           presence_before=0.1, presence_after=0.1 + success / 2, lowered=0.0)
            effects.append(row)
            images[f"inverted/{j}/{edit}"] = colour(e + 1, j)
            for pred in ("cmi", "heat"):
                for level in ("image", "pixel"):
                    r = 0.1 * (e + 1) * (1 if pred == "cmi" else -1) + (0.05 if level == "pixel" else 0)
                    undefined = pred == "cmi" and j == 9 and edit == "ablate"
                    corr.append({"source": "inverted", "latent": j, "word": word, "edit": edit, "predictor": pred,
                                 "level": level, "n": 1 if undefined else 4, "pearson": np.nan if undefined else r,
                                 "ci_low": np.nan if undefined else r - 0.2,
                                 "ci_high": np.nan if undefined else r + 0.2})
    pd.DataFrame(effects).to_csv(folder / "effects.csv", index=False)
    pd.DataFrame(corr).to_csv(folder / "correlations.csv", index=False)
    np.savez_compressed(folder / "images.npz", **images)
    # the untrained control: latent 10 j matched to latent j, a third of its success, its CMI rows only at r 0.3
    control = pd.DataFrame(effects).assign(matches=lambda t: t["latent"], latent=lambda t: 10 * t["latent"])
    if shapes:
        control["success_rate"] = control["success_rate"] / 3
    control.to_csv(folder / "control_effects.csv", index=False)
    cmi = pd.DataFrame(corr).query("predictor == 'cmi'").assign(matches=lambda t: t["latent"],
                                                               latent=lambda t: 10 * t["latent"], pearson=0.3)
    cmi.to_csv(folder / "control_correlations.csv", index=False)
    return folder


def inputs_of(folder) -> dict[str, list[str]]:
    return {"steering": [str(folder / f) for f in ("chosen.csv", "effects.csv", "correlations.csv", "images.npz",
                                                   "control_effects.csv", "control_correlations.csv")]}


def test_the_catalog_lists_the_steering_items_reproduced_by_the_default_config():
    for name in ("grid", "specificity", "causal"):
        it = ITEMS[f"steer/{name}"]
        assert it.needs == ("steering",) and it.config == "config.yaml" and it.paper == "steering"
        assert it.target("results") == f"results/figures/steer/{name}.png"
    assert producer("results/steer/m/d/r/pooled/t25/up_blocks.1/images.npz") == "steer_latents"
    assert producer("results/steer/m/d/r/spatial/t250/mid_block/effects.csv") == "steer_latents"
    assert steering.steer_sae("results/steer/m/d/r/pooled/t250/mid_block/effects.csv") == {
        "model": "m", "dataset": "d", "run": "r", "input": "pooled", "timestep": 250, "layer": "mid_block"}
    with pytest.raises(ReportError, match="not a steered SAE's file"):
        steering.steer_sae("results/sae/m/d/r/pooled/t250/mid_block/latents.csv")


def test_render_the_three_items(tmp_path):
    folder = steer_folder(tmp_path / "results")
    out = {}
    for name in ("grid", "specificity", "causal"):
        png, pdf, csv = (tmp_path / f"{name}.{ext}" for ext in ("png", "pdf", "csv"))
        table = render(f"steer/{name}", inputs_of(folder), png, pdf, csv, palette=Palette(),
                       results=str(tmp_path / "results"))
        assert_png_is_pdf_page(png, pdf)
        out[name] = pd.read_csv(csv)
        assert len(out[name]) == len(table)
    grid = out["grid"]  # the effects rows shown: two latents x three edits, in the grid's order, two images each
    assert list(zip(grid["latent"], grid["edit"])) == [(j, e) for j in LATENTS for e in EDITS]
    assert (grid["shown"] == 2).all() and (grid[list(SAE)] == pd.Series(SAE)).all().all()
    assert grid["success_rate"].tolist()[:5] == [RATES[(j, e)][0] for j in LATENTS for e in EDITS][:5]
    spec = out["specificity"].set_index(["latent", "edit"])
    assert len(spec) == 6 and spec.loc[(5, "add=+4"), "off_target_rate"] == 0.5
    assert spec.loc[(9, "ablate"), "n_eligible"] == 0 and np.isnan(spec.loc[(9, "ablate"), "success_rate"])
    assert spec.loc[(5, "add=+4"), "presence_after"] == pytest.approx(0.475)
    assert spec.loc[(9, "add=+4"), "mean_change"] == 209.0
    # the untrained control's matched latent under the same edit, beside each row
    assert spec.loc[(5, "add=+4"), "control_success_rate"] == pytest.approx(0.25)
    assert spec.loc[(5, "add=+4"), "control_off_target_rate"] == 0.5
    causal = out["causal"]
    control = causal[causal["predictor"] == "control_cmi"]
    assert len(control) == 6 * 2 and set(control["latent"]) == {5, 9} and set(control["control_latent"]) == {50, 90}
    assert (control["pearson"] == 0.3).all()
    causal = causal[causal["predictor"] != "control_cmi"]
    assert len(causal) == 6 * 2 * 2 and (causal["model"] == "shapes").all() and (causal["timestep"] == 25).all()
    row = causal[(causal["latent"] == 5) & (causal["edit"] == "add=+4") & (causal["predictor"] == "cmi")
                 & (causal["level"] == "pixel")].iloc[0]
    assert (row["pearson"], row["ci_low"], row["ci_high"]) == pytest.approx((0.25, 0.05, 0.45))
    assert causal["pearson"].isna().sum() == 2  # the undefined r stays in the table (not drawn)


def test_grid_draws_the_first_images_of_each_edit(tmp_path):
    folder = steer_folder(tmp_path / "results")
    table, panels = steering.grid_table(steering.read_saes(inputs_of(folder)["steering"]), per_cell=2)
    (panel,) = panels
    assert panel["source"] == "inverted" and (panel["unedited"] == colour(0)[:2]).all()
    (j, word, cells), _ = panel["rows"]
    assert (j, word) == (5, "red") and [c[0] for c in cells] == list(EDITS)
    assert (cells[1][1] == colour(2, 5)[:2]).all() and cells[1][2] == "success 75% · off 50%"


def test_specificity_without_the_shapes_read_back_shows_the_mean_change(tmp_path):
    folder = steer_folder(tmp_path / "results", shapes=False)
    table = steering.specificity_table(steering.read_saes(inputs_of(folder)["steering"]))
    assert table["success_rate"].isna().all() and table["mean_change"].tolist()[:3] == [105.0, 205.0, 305.0]
    steering.plot_specificity(table, tmp_path / "s.png", tmp_path / "s.pdf", "specificity")
    assert_png_is_pdf_page(tmp_path / "s.png", tmp_path / "s.pdf")


def test_summary_quotes_each_latents_best_edit_with_its_off_target_rate_and_cmi(tmp_path):
    folder = steer_folder(tmp_path / "results")
    rows = headline_rows({"steer": [str(folder / "effects.csv"), str(folder / "correlations.csv"),
                                    str(folder / "control_effects.csv")]}, {"shapes": "shapes"})
    assert list(rows["section"]) == ["Steering", "Steering"] and set(rows["model"]) == {"shapes"}
    red, blue = rows["this run"]
    # latent 5: add=+4 succeeds most (0.75); latent 9: add=+2 and add=+4 tie at 0.5, the first one run wins
    assert red == ("add=+4: success 0.75 of 4 eligible, off-target 0.50 of 4 (the untrained control's matched latent: "
                   "success 0.25); r(CMI) 0.25 [0.05, 0.45], n=4")
    assert blue.startswith("add=+2: success 0.50 of 4 eligible, off-target 0.25 of 4 (the untrained control's")
    assert "latent #5 'red' (up_blocks.1, t=25, SAE r (pooled))" in rows["quantity"].iloc[0]
    plain = steer_folder(tmp_path / "other", shapes=False)
    best = steering.best_edits(pd.read_csv(plain / "effects.csv"), pd.read_csv(plain / "correlations.csv"))
    assert best["edit"].tolist() == ["ablate", "ablate"] and set(best["measure"]) == {"mean_change"}
    assert best["cmi_pearson"].isna().tolist() == [False, True]  # latent 9's ablation has no CMI r


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_browser_pages_of_steered_latents_carry_their_strip(tmp_path):
    folder = steer_folder(tmp_path / "results")
    scores = np.zeros((6, 12), np.float32)
    scores[:, [1, 2, 3]] = 1.0  # the most frequent latents: 1, 2, 3; latents 5 and 9 are steered
    scores[:2, 5] = scores[:1, 9] = 2.0
    table = pd.DataFrame({"latent": [1, 2, 3, 5, 9], "frequency": [1.0, 1.0, 1.0, 0.3, 0.1],
                          "mean_activation": [1.0, 1.0, 1.0, 2.0, 2.0], "purity": 0.5, "sigma": 1.0,
                          "best_attribute": ["shape=circle", "n_objects=2", "colour=green", "colour=red",
                                             "colour=blue"], "auroc": 0.8})
    pages = browser.latent_pages(scores, table, top=2, quantiles=[0.5], bins=3, max_latents=2, keep=[5, 9])
    assert [p["id"] for p in pages] == [1, 2, 5, 9]  # the two most frequent, then the steered ones
    images = dict(np.load(folder / "images.npz"))
    shared = browser.add_steering(pages, pd.read_csv(folder / "effects.csv"), images, size=4)
    assert shared["source"] == "inverted" and len(shared["unedited"]) == 3
    assert decode(shared["unedited"][0]).shape == (4, 4, 3)  # shrunk to the thumbnail size
    by_id = {p["id"]: p for p in pages}
    assert "steer" not in by_id[1] and "steer" not in by_id[2]
    strip = by_id[5]["steer"]
    assert [e["label"] for e in strip] == list(EDITS) and all(len(e["images"]) == 3 for e in strip)
    assert (strip[1]["success"], strip[1]["offTarget"], strip[1]["eligible"]) == (0.75, 0.5, 4.0)
    assert strip[1]["change"] == 205.0 and (decode(strip[1]["images"][2]) == colour(2, 5)[2, :4, :4]).all()
    assert by_id[9]["steer"][2]["success"] is None and by_id[9]["steer"][2]["eligible"] == 0.0
    assert browser.add_steering(pages, pd.read_csv(folder / "effects.csv"), {}, size=4) is None
