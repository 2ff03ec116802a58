"""The figures draw through seaborn from long-form tables: heat maps of the layer x timestep grids (Table 3's Diff-C
accuracy, the shapes world's attribute map), bars with the tables' own intervals (ARO, localization, Table 4's
intervention), Fig. 3's change against CMI with a fitted line per edit, and the ARO margin scatter. Each test records
the seaborn calls (the real functions still draw) and checks the rows they were given and what is on the axes."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import seaborn as sns

from difflens.info.plots import margin_scatter
from difflens.report import attributes, information, revelio, style
from test_report import PALETTE, accuracy, sae_summary


@pytest.fixture
def drawn(monkeypatch):
    """{seaborn function: [(data it was given, its keyword arguments)]} of every call of the seaborn functions the
    figures use, each still drawing."""
    seen = {}
    for name in ("heatmap", "barplot", "regplot", "scatterplot"):
        def record(data, *args, _real=getattr(sns, name), _name=name, **kws):
            seen.setdefault(_name, []).append((data.copy(), kws))
            return _real(data, *args, **kws)

        monkeypatch.setattr(sns, name, record)
    return seen


def bars(ax) -> list:
    """The bars drawn (not the legend's proxy patches)."""
    return [p for c in ax.containers if isinstance(c, matplotlib.container.BarContainer) for p in c]


def bar_heights(ax) -> list[float]:
    return sorted(round(p.get_height(), 6) for p in bars(ax))


def whiskers(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of every whisker drawn from a table's interval, sorted."""
    out = []
    for c in ax.containers:
        if isinstance(c, matplotlib.container.ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                out.append(tuple(round(float(v), 6) for v in (seg[0, 0], seg[0, 1], seg[1, 1])))
    return sorted(out)


def test_theme_is_seaborn_under_the_projects_rc():
    matplotlib.rcdefaults()
    style.apply_style()
    rc = matplotlib.rcParams
    assert rc["grid.color"] == ".8" and rc["axes.facecolor"] == "white"  # seaborn's whitegrid
    assert rc["font.size"] == style.RC["font.size"] and rc["axes.spines.top"] is False  # the project's rc on top


def test_accuracy_grid_is_an_annotated_seaborn_heat_map(tmp_path, drawn):
    revelio.plot_accuracy_grid(accuracy(), tmp_path / "t3.png", tmp_path / "t3.pdf", "Table 3", PALETTE)
    [(grid, kws)] = drawn["heatmap"]  # one (model, data set, target) with Diff-C rows
    assert list(grid.index) == ["mid_block", "up_blocks.1"] and list(grid.columns) == [25, 500]
    assert grid.to_numpy().tolist() == [[0.5, 0.5], [0.95, 0.95]]
    ax = kws["ax"]
    assert isinstance(ax.collections[0], matplotlib.collections.QuadMesh)
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.50", "0.95", "0.95"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t=25", "t=500"]
    assert (tmp_path / "t3.png").is_file() and (tmp_path / "t3.pdf").is_file()


def test_attribute_map_is_one_seaborn_heat_map_per_source(tmp_path, drawn):
    table = attributes.readability_table(accuracy(), sae_summary())
    attributes.plot_readability(table, PALETTE, tmp_path / "a.png", tmp_path / "a.pdf", "attributes")
    maps = [(grid, kws["ax"]) for grid, kws in drawn["heatmap"]]
    source_of = {ax: next(k for k, v in attributes.SOURCES.items() if ax.get_title().startswith(v)) for _, ax in maps}
    # facets by model (dit < shapes), then source in SOURCES' order
    assert [(ax.get_title().split("\n")[-1], source_of[ax]) for _, ax in maps] == [
        ("dit · shapes", "sae"), ("shapes · shapes", "diffc"), ("shapes · shapes", "linear_probe"),
        ("shapes · shapes", "sae")]
    cells = table.groupby(["model", "source"])[["layer", "timestep", "attribute"]].apply(
        lambda g: len(g.drop_duplicates()))
    for grid, ax in maps:  # every (layer, timestep, attribute) of a facet is an annotated cell: none dropped
        model = ax.get_title().split("\n")[-1].split(" · ")[0]
        assert grid.notna().to_numpy().sum() == cells[(model, source_of[ax])] == len(ax.texts)
    probe = maps[2][0]
    assert probe.loc[("mid_block", 25), "colour"] == pytest.approx((0.7 - 0.4) / 0.6)
    sae = maps[3][1]
    assert "0.80\n(0.60)" in [t.get_text() for t in sae.texts]  # up_blocks.1's colour: (0.9 + 0.7) / 2, control 0.6


def test_grouped_bars_are_seaborn_bars_with_the_tables_whiskers():
    fig, ax = matplotlib.pyplot.subplots()
    table = pd.DataFrame({"x": ["a", "a", "b"], "h": [2, 1, 1], "v": [0.5, 0.25, 0.75], "lo": [0.4, 0.2, 0.5],
                          "hi": [0.7, 0.3, 0.8]})
    where = style.grouped_bars(ax, table, "x", "h", [1, 2, 3], "v", colour={1: "red", 2: "blue"}.get,
                               label=lambda h: f"t={h}", lo="lo", hi="hi")
    assert list(where) == [1, 2] and where[1].tolist() == pytest.approx([-0.2, 0.8])
    centres = sorted((round(p.get_x() + p.get_width() / 2, 6), p.get_height()) for p in bars(ax))
    assert centres == [(-0.2, 0.25), (0.2, 0.5), (0.8, 0.75)]  # the b/2 pair is absent: no bar
    assert whiskers(ax) == [(-0.2, 0.2, 0.3), (0.2, 0.4, 0.7), (0.8, 0.5, 0.8)]
    assert ax.get_legend_handles_labels()[1] == ["t=1", "t=2"] and ax.get_xlabel() == ""
    matplotlib.pyplot.close(fig)


def test_aro_bars_take_every_score_and_their_stderr(tmp_path, drawn):
    rows = [{"model": "m", "dataset": "d", "kind": kind, "metric": metric, "group": np.nan, "score": score, "n": 40,
             "accuracy": 0.5 + 0.1 * j + (0.05 if metric == "macro" else 0), "stderr": 0.01 * (j + 1)}
            for kind in ("relation", "order") for metric in ("accuracy", "macro")
            for j, score in enumerate(information.SCORES)]
    table = information.aro_table(pd.DataFrame(rows), per_group=False)
    information.plot_aro(table, False, tmp_path / "t1.png", tmp_path / "t1.pdf", "Table 1")
    [(long, kws)] = drawn["barplot"]
    assert len(long) == 12 and set(long["x"]) == {"relation", "relation (macro)", "order", "order (macro)"}
    assert bar_heights(kws["ax"]) == sorted(round(r["accuracy"], 6) for r in rows)
    assert sorted(round(hi - lo, 6) for _, lo, hi in whiskers(kws["ax"])) == sorted(
        round(2 * r["stderr"], 6) for r in rows)


def test_intervention_bars_are_seaborn_with_the_bootstrap_intervals(tmp_path, drawn):
    rows = [{"model": "m", "dataset": "d", "edit": edit, "level": level, "predictor": p, "n": 30,
             "pearson": 0.1 * k, "ci_low": 0.1 * k - 0.05, "ci_high": 0.1 * k + 0.08}
            for edit in ("omit", "swap") for level in ("image", "pixel")
            for k, p in enumerate(information.INTERVENTION_COLOURS)]
    information.plot_intervention(pd.DataFrame(rows), tmp_path / "t4.png", tmp_path / "t4.pdf", "Table 4")
    (maps, top), (diffs, bottom) = drawn["barplot"]
    # 4 maps + 2 masks, and 4 x 2 paired differences, at 4 (edit, level) groups
    assert len(maps) == 24 and len(diffs) == 32 and not maps["predictor"].str.contains("-").any()
    for long, kws in ((maps, top), (diffs, bottom)):
        assert bar_heights(kws["ax"]) == sorted(round(v, 6) for v in long["pearson"])
        assert sorted((lo, hi) for _, lo, hi in whiskers(kws["ax"])) == sorted(
            zip(long["ci_low"].round(6), long["ci_high"].round(6)))
    labels = top["ax"].get_legend_handles_labels()[1]
    assert "CMI (i^s)" in labels and "attention during regeneration (DAAM)" in labels
    assert "the word's object mask" in labels


def test_localization_bars_and_oracle_marks_line_up(tmp_path, drawn):
    loc = pd.DataFrame([{"model": "m", "dataset": "d", "word_type": w, "n": 9, "threshold_source": "val split",
                         **{m: 0.1 + 0.1 * j + 0.05 * i for j, m in enumerate(information.METHODS)},
                         **{f"{m}:oracle": 0.2 + 0.1 * j for j, m in enumerate(information.METHODS[1:])}}
                        for i, w in enumerate(("all", "noun"))])
    table = information.localization_table(loc)
    information.plot_localization(table, tmp_path / "l.png", tmp_path / "l.pdf", "Table 3")
    [(long, kws)] = drawn["barplot"]
    assert len(long) == 2 * len(information.METHODS) and set(long["threshold"]) == {"held-out", "none"}
    ax = kws["ax"]
    centres = {round(p.get_x() + p.get_width() / 2, 6) for p in bars(ax)}
    marks = np.concatenate([c.get_offsets() for c in ax.collections
                            if isinstance(c, matplotlib.collections.PathCollection)])
    marks = marks[np.isfinite(marks[:, 1])]
    assert len(marks) == 2 * (len(information.METHODS) - 1) and {round(float(x), 6) for x in marks[:, 0]} <= centres


def test_fig3_fits_a_line_to_each_edits_change_against_cmi(tmp_path, drawn):
    rng = np.random.default_rng(0)
    n = 9
    items = pd.DataFrame({"sample_id": [f"s{i % 3}" for i in range(n)], "edit": ["omit"] * 6 + ["swap"] * 3,
                          "word": "w", "cmi_s_nats": rng.uniform(0, 2, n)})
    items["change_total"] = 3 * items["cmi_s_nats"] + rng.normal(0, 0.1, n)
    maps = {k: rng.uniform(0, 1, (n, 4, 4)) for k in ("change", "cmi", "attention_regen")}
    images = {f"s{i}": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for i in range(3)}
    pick = information.intervention_examples(items)
    out = information.plot_intervention_examples(items, pick, maps, images, tmp_path / "f3.png", tmp_path / "f3.pdf",
                                                 "Fig. 3")
    assert len(out) == 3 and "map_row" not in out
    fits = drawn["regplot"]
    assert [len(g) for g, _ in fits] == [6, 3] and [set(g["edit"]) for g, _ in fits] == [{"omit"}, {"swap"}]
    ax = fits[0][1]["ax"]
    line = ax.lines[0].get_xydata()
    slope = (line[-1, 1] - line[0, 1]) / (line[-1, 0] - line[0, 0])
    assert slope == pytest.approx(np.polyfit(items["cmi_s_nats"][:6], items["change_total"][:6], 1)[0], rel=1e-6)
    assert ax.get_legend_handles_labels()[1] == ["omit (6)", "swap (3)"]


def test_margin_scatter_plots_every_item_through_seaborn(tmp_path, drawn):
    outcomes = pd.DataFrame([{"item": i, "kind": kind, "score": s, "margin_nats": 0.1 * i - (s == "i_o")}
                             for i in range(5) for kind in ("relation", "order")[: 1 + (i < 2)]
                             for s in ("i_s", "i_o", "err")])
    margin_scatter(outcomes, tmp_path / "m.png", "margins")
    [(wide, kws)] = drawn["scatterplot"]
    assert len(wide) == 7 and sorted(set(wide["kind"])) == ["order (2)", "relation (5)"]
    assert len(kws["ax"].collections[0].get_offsets()) == 7 and (tmp_path / "m.png").is_file()
