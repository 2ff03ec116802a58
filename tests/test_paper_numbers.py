"""The papers' numbers (docs/paper_numbers.csv) and the rule that sets one beside ours only like for like
(difflens.report.paper)."""
from __future__ import annotations

import pandas as pd
import pytest

from difflens.models.catalog import UNET_ALIASES
from difflens.report.catalog import ITEMS
from difflens.report.paper import PAPER_MODELS, compare, identities, load_numbers, paper_model


def test_every_paper_number_names_its_source_item_and_check():
    numbers = load_numbers()
    assert len(numbers) and numbers["value"].notna().all()
    assert (numbers["source"] != "").all() and (numbers["verified"] != "").all()
    family = {"revelio": "revelio", "kong": "infodecomp"}
    for r in numbers.to_dict("records"):
        assert f"{family[r['paper']]}/{r['item']}" in ITEMS, r
        assert r["model"] in PAPER_MODELS, r
        assert r["layer"] not in UNET_ALIASES, r  # module paths, as the tables write them
    keyed = numbers[numbers["summary_key"] != ""]
    assert set(keyed["paper"]) == {"kong"}


def config(**sae):
    return {"models": {"sd15": {"kind": "sd", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
                       "shapes": {"kind": "shapes", "source": "resources/shapes_model"}},
            "datasets": {"pets": {"source": "pets"}, "caltech": {"source": "caltech101", "params": {"protocol": "seeded"}},
                         "caltech_tfds": {"source": "caltech101", "params": {"protocol": "tfds"}}},
            "sae": {"sigma": "public_code", "split": "train", **sae}}


def sigma_rows(rows: list[dict], **sae) -> pd.DataFrame:
    table = pd.DataFrame([{"sigma_label": 9.0, "sigma_definition": sae.get("sigma", "public_code"), **r} for r in rows])
    return compare(table, load_numbers(), identities(config(**sae)), "revelio",
                   ("table2a", "table2b", "table2c", "table2d"), "sigma_label", "sigma_label")


def test_a_paper_number_stands_beside_ours_only_like_for_like():
    assert paper_model("runwayml/stable-diffusion-v1-5") == "sd15" and paper_model("resources/shapes_model") == ""
    got = sigma_rows([
        {"model": "sd15", "dataset": "pets", "layer": "up_ft1", "timestep": 25},  # the alias of up_blocks.1
        {"model": "shapes", "dataset": "pets", "layer": "up_ft1", "timestep": 25},
        {"model": "sd15", "dataset": "pets", "layer": "up_ft1", "timestep": 10},
        {"model": "sd15", "dataset": "caltech", "layer": "bottleneck", "timestep": 25},
        {"model": "sd15", "dataset": "caltech_tfds", "layer": "bottleneck", "timestep": 25},
    ])
    assert got["paper_value"].iloc[0] == pytest.approx(8.59) and got["paper_differs"].iloc[0] == ""
    assert got["paper_verified"].iloc[0] and "row up_ft1" in got["paper_source"].iloc[0]
    assert got["paper_differs"].iloc[1].startswith("model shapes (resources/shapes_model) is not the paper's")
    assert got["paper_differs"].iloc[2].startswith("timestep 10 (the paper reports 0, 25, 100")
    assert got["paper_differs"].iloc[3].startswith("protocol seeded (the paper's: tfds)")
    assert got["paper_value"].iloc[4] == pytest.approx(9.35)
    assert got["paper_value"].iloc[1:4].isna().all()


def test_sigma_label_is_compared_only_as_the_public_code_computed_it():
    row = [{"model": "sd15", "dataset": "pets", "layer": "up_ft1", "timestep": 25}]
    assert sigma_rows(row, sigma="sparse")["paper_differs"].iloc[0] == (
        "sigma_label sparse on the train split (the paper's: public_code on train)")
    assert sigma_rows(row, split="test")["paper_differs"].iloc[0].endswith("on the test split (the paper's: "
                                                                            "public_code on train)")


def test_an_item_without_paper_numbers_says_so():
    table = pd.DataFrame([{"model": "sd15", "dataset": "pets", "layer": "up_ft1", "timestep": 25,
                           "test_accuracy": 0.9}])
    got = compare(table, load_numbers(), identities(config()), "revelio", ("fig4",), "accuracy", "test_accuracy")
    assert got["paper_differs"].iloc[0] == "no paper number for this item in docs/paper_numbers.csv"


def test_table2_draws_the_paper_star_only_where_it_matches(monkeypatch, tmp_path):
    from difflens.report import revelio
    from difflens.report.style import Palette

    summary = pd.DataFrame([{"model": m, "dataset": "pets", "run": "paper", "input": "pooled", "layer": "up_ft1",
                             "timestep": t, "sigma_definition": "public_code", "sigma_label": 9.1, "purity": 0.4,
                             "random_sigma_mean": 10.5, "random_purity_mean": 0.1, "live_latents": 9,
                             "n_latents": 10, "split": "train"} for m in ("sd15", "shapes") for t in (25, 10)])
    table = revelio.sae_table(summary, "layer")
    table = compare(table, load_numbers(), identities(config()), "revelio", ["table2a"], "sigma_label",
                    "sigma_label")
    matched = table[table["paper_value"].notna()]
    assert matched[["model", "timestep"]].values.tolist() == [["sd15", 25]]  # sd15 at t = 25 only
    drawn = {}
    monkeypatch.setattr(revelio, "save_figure", lambda fig, png, pdf: drawn.setdefault("fig", fig))
    revelio.plot_sae_table(table, "layer", Palette(models=["sd15", "shapes"], layers=["up_ft1"], timesteps=[10, 25]),
                           tmp_path / "a.png", None, "t")
    stars = [c for ax in drawn["fig"].axes for c in ax.collections if c.get_label() == "paper (star)"]
    assert len(stars) == 1 and stars[0].get_offsets()[:, 1].tolist() == [pytest.approx(8.59)]


def test_accuracy_figures_draw_a_paper_number_where_one_matches_and_say_why_not_elsewhere(monkeypatch, tmp_path):
    from difflens.report import revelio
    from difflens.report.style import Palette

    acc = pd.DataFrame([{"model": m, "dataset": "pets", "classifier": "diffc", "target": "label", "layer": "up_ft1",
                         "timestep": 25, "test_accuracy": 0.8, "test_stderr": 0.01, "n_classes": 37}
                        for m in ("sd15", "shapes")])
    numbers = pd.concat([load_numbers(), pd.DataFrame([{
        "paper": "revelio", "item": "fig8", "model": "sd15", "dataset": "pets", "layer": "up_blocks.1",
        "timestep": 25, "protocol": "official", "metric": "accuracy", "value": 90.0, "unit": "%", "source": "test",
        "verified": "test row", "note": "", "summary_key": ""}])], ignore_index=True)
    table = compare(acc, numbers, identities(config()), "revelio", ["fig8"], "accuracy", "test_accuracy")
    assert table["paper_value"].tolist()[0] == pytest.approx(0.90) and pd.isna(table["paper_value"].iloc[1])
    drawn = {}
    monkeypatch.setattr(revelio, "save_figure", lambda fig, png, pdf: drawn.setdefault("fig", fig))
    palette = Palette(models=["sd15", "shapes"], layers=["up_ft1"], timesteps=[25])
    revelio.plot_accuracy(table, "architecture", palette, tmp_path / "a.png", None, "t")
    stars = [c for ax in drawn["fig"].axes for c in ax.collections if c.get_label() == "paper (star)"]
    assert len(stars) == 1 and stars[0].get_offsets().tolist() == [[0.0, pytest.approx(0.9)]]
    drawn.clear()  # the shapes model alone: no star, and the panel says why
    revelio.plot_accuracy(table.iloc[1:], "architecture", palette, tmp_path / "b.png", None, "t")
    texts = [t.get_text() for ax in drawn["fig"].axes for t in ax.texts]
    assert any(t.startswith("no paper number: model shapes") for t in texts), texts
