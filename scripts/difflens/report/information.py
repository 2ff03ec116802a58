"""The information-decomposition paper items from ``info/<model>/<data set>/``: Tables 1-2 (ARO overall and per
relation, i^o beside i^s and the denoising error), Fig. 2 (MI / CMI / attention maps over the image on one colour
scale), Table 3 (localization mIoU, held-out and oracle thresholds; both attention rows, and every draw count of a
list), Table 4 (prompt intervention: CMI as i^s and i^o and attention during regeneration and on the draws, beside
the mask baselines, and their paired differences) and Fig. 3 (intervention examples)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from .revelio import ReportError
from .style import SCORE_COLOURS, SCORE_NAMES, apply_style, grouped_bars, note_figure, plt, save_figure, shade

SCORES = ("i_s", "i_o", "err")
METHODS = ("whole_image", "mi", "cmi", "attention_itd", "attention_ddim", "attention+cmi")
MAP_KINDS = ("mi", "cmi", "attention_itd")
#: the label of the public code's threshold (``info.localize.PAPER_GRID``, chosen on the evaluation rows)
ORACLE = "oracle (paper grid, test-set pick)"


def _bars(ax, table: pd.DataFrame, x: str, hue: str, hues, value: str, **whiskers) -> dict:
    """Grouped bars in the information scores' fixed colours and names (``style.grouped_bars``)."""
    return grouped_bars(ax, table, x, hue, hues, value, colour=SCORE_COLOURS.get,
                        label=lambda h: SCORE_NAMES.get(h, h), **whiskers)


def paper_stars(ax, where: dict, table: pd.DataFrame, x: str, hue: str, label: str) -> None:
    """A star at each bar (``where``: ``grouped_bars``' positions) whose row of ``table`` has a ``paper_value``
    (``report.paper.compare_keyed``: the paper's number of a row computed the same way)."""
    if "paper_value" not in table:
        return
    xs = list(dict.fromkeys(table[x]))
    rows = table.dropna(subset=["paper_value"])
    rows = rows[rows[hue].isin(list(where)) & rows[x].isin(xs)]
    if len(rows):
        ax.scatter([where[h][xs.index(v)] for h, v in zip(rows[hue], rows[x])], rows["paper_value"], marker="*",
                   s=70, color="k", zorder=4, label=label)


# ---- Tables 1-2: ARO ----------------------------------------------------------------------------------------------
def aro_table(aro: pd.DataFrame, per_group: bool) -> pd.DataFrame:
    """Table 1 (``per_group`` False): accuracy and macro accuracy per kind and score; Table 2: per relation (and
    attribute) group. ``aro`` is aro.csv with model and dataset columns."""
    rows = aro[aro["metric"] == "group"] if per_group else aro[aro["metric"].isin(["accuracy", "macro"])]
    if per_group and rows.empty:
        return pd.DataFrame(columns=["model", "dataset", "kind", "metric", "group", *SCORES])
    if per_group:  # a group's binomial standard error where the table leaves it out
        rows = rows.assign(stderr=rows["stderr"].fillna(np.sqrt(rows["accuracy"] * (1 - rows["accuracy"])
                                                                / rows["n"])))
    if rows.empty:
        raise ReportError("no ARO rows")
    wide = rows.pivot_table(index=["model", "dataset", "kind", "metric", "group"] if per_group else
                            ["model", "dataset", "kind", "metric"], columns="score",
                            values="accuracy", dropna=False).reset_index()
    err = rows.pivot_table(index=[c for c in wide.columns if c not in SCORES], columns="score", values="stderr",
                           dropna=False)
    err.columns = [f"{c}_stderr" for c in err.columns]
    wide = wide.merge(err.reset_index(), how="left")
    wide = wide.dropna(how="all", subset=[c for c in SCORES if c in wide])
    n = rows.groupby([c for c in wide.columns if c in ("model", "dataset", "kind", "metric", "group")])["n"].max()
    wide = wide.merge(n.reset_index(), how="left")
    if "draws" in rows:  # the draws per image (collect_aro writes them): the paper's Table 1 is at 100
        wide = wide.merge(rows[["model", "dataset", "draws"]].drop_duplicates(["model", "dataset"]), how="left")
    return wide.reset_index(drop=True)


#: the ARO scores the paper's Table 1 reports (i^o, and DiffITM's denoising error)
PAPER_SCORES = ("i_o", "err")


def aro_paper(table: pd.DataFrame, numbers, identity: dict) -> pd.DataFrame:
    """Table 1 with the paper's numbers of the same rows (``paper_<score>``, ``paper_<score>_differs``, ...): VG-R
    and VG-A beside the macro accuracy, COCO / Flickr30k-Order beside the accuracy (Precision@1), for the same
    weights and data set (``paper.compare_keyed``)."""
    from .paper import COLUMNS, compare_keyed

    paper_row = ((table["metric"] == "macro") & table["kind"].isin(["relation", "attribute"])) | \
        ((table["metric"] == "accuracy") & (table["kind"] == "order"))
    for score in PAPER_SCORES:
        keyed = compare_keyed(table.assign(paper_key=np.where(paper_row, "aro/" + table["kind"] + "/" + score, "")),
                              numbers, identity, "paper_key", "draws" if "draws" in table else None)
        table = table.assign(**{c.replace("paper_", f"paper_{score}_").replace(f"paper_{score}_value",
                                                                              f"paper_{score}"): keyed[c]
                                for c in COLUMNS})
    return table


def plot_aro(table: pd.DataFrame, per_group: bool, png, pdf, title: str) -> None:
    apply_style()
    if table.empty:
        note_figure(png, pdf, title, "no relation or attribute group has infodecomp.aro.min_group items")
        return
    facets = list(table.groupby(["model", "dataset", "kind"] if per_group else ["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(facets), figsize=(max(6.5, 1.2 * len(facets[0][1])) * len(facets), 3.8),
                             squeeze=False)
    for ax, (key, g) in zip(axes[0], facets):
        g = g.assign(_row=g.index)
        long = g.melt(id_vars=[c for c in g.columns if c not in SCORES and not c.endswith("_stderr")],
                      value_vars=[s for s in SCORES if s in g], var_name="score", value_name="accuracy")
        errs = g.melt(id_vars=[c for c in g.columns if c not in SCORES and not c.endswith("_stderr")],
                      value_vars=[f"{s}_stderr" for s in SCORES if f"{s}_stderr" in g], var_name="score",
                      value_name="stderr")
        errs["score"] = errs["score"].str.removesuffix("_stderr")
        long = long.merge(errs, how="left")
        long["x"] = long["group"] if per_group else long["kind"] + np.where(long["metric"] == "macro", " (macro)", "")
        where = _bars(ax, long, "x", "score", SCORES, "accuracy", err="stderr")
        if not per_group and any(f"paper_{sc}" in g for sc in PAPER_SCORES):
            long["paper_value"] = [g.get(f"paper_{sc}", pd.Series(np.nan, g.index)).loc[i] if sc in PAPER_SCORES
                                   else np.nan for sc, i in zip(long["score"], long["_row"])]
            paper_stars(ax, where, long, "x", "score", "the paper (same weights and data set)")
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (true caption scores highest)")
        ax.set_title(" · ".join(map(str, key)))
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    fig.suptitle(title + " (dotted: chance with one negative)")
    fig.tight_layout()
    save_figure(fig, png, pdf)


# ---- Table 3: localization mIoU -----------------------------------------------------------------------------------
def localization_table(loc: pd.DataFrame) -> pd.DataFrame:
    """Long form of localization.csv: one row per (model, data set, word type, method, draw count, threshold), mIoU
    in [0, 1] (``draws``: the smaller count of a ``<method>@<n>`` column, empty for the run's full count); empty when
    no localized data set has masks (COCO-WL: maps only)."""
    out = []
    for r in loc.to_dict("records"):
        for col in r:
            m, _, n = col.partition("@")
            if m not in METHODS or ":" in col or pd.isna(r[col]):
                continue
            steps = n or (r.get("ddim_steps") if m == "attention_ddim" else r.get("draws"))
            out.append({"model": r["model"], "dataset": r["dataset"], "word_type": r["word_type"], "n": r["n"],
                        "method": m, "draws": n, "steps": steps if m != "whole_image" else "",
                        "threshold": "held-out" if m != "whole_image" else "none",
                        "threshold_source": r["threshold_source"], "miou": r[col],
                        "paper_key": "localization/whole_image" if m == "whole_image" and r["word_type"] == "all"
                        else ""})
            if pd.notna(r.get(f"{col}:oracle")):
                out.append({**out[-1], "threshold": ORACLE, "miou": r[f"{col}:oracle"],
                            "paper_key": f"localization/{m}:oracle" if r["word_type"] == "all" else ""})
    return pd.DataFrame(out, columns=["model", "dataset", "word_type", "n", "method", "draws", "steps", "threshold",
                                      "threshold_source", "miou", "paper_key"])


def plot_localization(table: pd.DataFrame, png, pdf, title: str) -> None:
    apply_style()
    if table.empty:  # data sets without masks: the maps exist, an mIoU does not
        note_figure(png, pdf, title, "no localized data set has object masks: no mIoU (the maps are in Fig. 2)")
        return
    table = table[table["draws"] == ""]  # the full draw count (the smaller ones are in the table)
    held = table[table["threshold"] != ORACLE]
    oracle = table[table["threshold"] == ORACLE]
    facets = list(held.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(facets), figsize=(6.5 * len(facets), 3.8), squeeze=False)
    for ax, ((model, ds), g) in zip(axes[0], facets):
        where = _bars(ax, g, "word_type", "method", METHODS, "miou")
        o = oracle[(oracle["model"] == model) & (oracle["dataset"] == ds)]
        xs = list(dict.fromkeys(g["word_type"]))
        marks = pd.DataFrame([{"method": m, "word_type": w, "x": x} for m, pos in where.items()
                              for w, x in zip(xs, pos)]).merge(o[["method", "word_type", "miou"]]).dropna()
        if len(marks):  # on seaborn's categorical axis: no point without a value (whole_image has no oracle)
            ax.scatter(marks["x"], marks["miou"], marker="_", s=60, color="k", zorder=3, label=ORACLE)
        paper_stars(ax, where, table[(table["model"] == model) & (table["dataset"] == ds) &
                                     (table["threshold"] != "held-out")], "word_type", "method",
                    "the paper (same method and steps; beside the oracle)")
        ax.set_ylim(0, 1)
        ax.set_ylabel("mIoU (threshold chosen on held-out rows)")
        ax.set_xlabel("word type")
        ax.set_title(f"{model} · {ds}")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


# ---- Fig. 2: heat maps over the image -----------------------------------------------------------------------------
def pick_map_rows(maps: dict, n_images: int = 3, words: int = 3) -> list[int]:
    """Rows of localization_maps.npz to show: the first ``n_images`` images with the most words, up to ``words``
    each, preferring one word of each type."""
    ids = maps["sample_id"]
    order = list(dict.fromkeys(ids))
    counts = {s: int((ids == s).sum()) for s in order}
    chosen = sorted(order, key=lambda s: -counts[s])[:n_images]
    rows = []
    for s in chosen:
        idx = np.flatnonzero(ids == s)
        by_type = list({str(maps["word_type"][i]): i for i in idx[::-1]}.values())[::-1]
        rows += (by_type + [i for i in idx if i not in by_type])[:words]
    return rows


def overlay(ax, image: np.ndarray, heat: np.ndarray, vmax: float, cmap: str = "inferno"):
    """The image in grey with ``heat`` (any grid) upsampled bilinearly over it."""
    from PIL import Image

    h, w = image.shape[:2]
    up = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    ax.imshow(image.mean(2), cmap="gray", vmin=0, vmax=255)
    im = ax.imshow(up, cmap=cmap, vmin=0, vmax=vmax, alpha=0.65)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_heat_maps(maps: dict, rows: list[int], images: dict[str, np.ndarray], png, pdf, title: str) -> pd.DataFrame:
    """Fig. 2: per (image, word) row, the image and its MI, CMI and attention maps on one colour scale (nats per
    latent pixel; attention, a probability, rescaled so that its maximum is the row's largest MI/CMI value; no
    attention column for a class-conditional model). Returns the rows shown, with each map's total and maximum."""
    apply_style()
    attention = "attention_itd" in maps
    cols = 4 if attention else 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.1 * cols, 2.2 * len(rows)), squeeze=False,
                             layout="constrained")
    shown = []
    for r, i in enumerate(rows):
        sid, word = str(maps["sample_id"][i]), str(maps["word"][i])
        image = images[sid]
        vmax = float(max(maps["mi"][i].max(), maps["cmi"][i].max(), 1e-12))
        panels = [("mi", maps["mi"][i]), ("cmi", maps["cmi"][i])]
        if attention:
            panels.append(("attention_itd", maps["attention_itd"][i] * (
                vmax / max(float(maps["attention_itd"][i].max()), 1e-12))))
        axes[r, 0].imshow(image)
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(f"{sid}\n'{word}' ({maps['word_type'][i]})", fontsize=7)
        for c, (kind, heat) in enumerate(panels, 1):
            im = overlay(axes[r, c], image, heat, vmax)
            if r == 0:
                axes[r, c].set_title(SCORE_NAMES[kind])
        fig.colorbar(im, ax=axes[r, 1:].tolist(), fraction=0.03,
                     label="MI, CMI: nats / latent pixel" + ("\n(attention: rescaled to the row's max)"
                                                              if attention else ""))
        shown.append({"sample_id": sid, "word": word, "word_type": str(maps["word_type"][i]),
                      "mi_nats": float(maps["mi_nats"][i]), "cmi_nats": float(maps["cmi_nats"][i]),
                      "mi_max": float(maps["mi"][i].max()), "cmi_max": float(maps["cmi"][i].max()),
                      "attention_max": float(maps["attention_itd"][i].max()) if attention else float("nan"),
                      "grid": "x".join(map(str, maps["mi"][i].shape))})
    axes[0, 0].set_title("image")
    fig.suptitle(title)
    save_figure(fig, png, pdf)
    return pd.DataFrame(shown)


# ---- Table 4 and Fig. 3: prompt intervention ----------------------------------------------------------------------
#: Table 4's predictors in plotting order and colour: the maps, the mask baselines (``info.intervene.MASK_BASELINES``,
#: grey) and each map's paired difference with each baseline (``<map>-<baseline>``, the map's colour, darker for
#: the all-objects mask)
INTERVENTION_MAPS = ("cmi_s", "cmi", "attention_regen", "attention_itd")
INTERVENTION_COLOURS = {**{m: SCORE_COLOURS[m] for m in INTERVENTION_MAPS},
                        "object_mask": "#bdbdbd", "all_objects_mask": "#636363",
                        **{f"{m}-{b}": shade(SCORE_COLOURS[m], f) for m in INTERVENTION_MAPS
                           for b, f in (("object_mask", 1.4), ("all_objects_mask", 0.6))}}
MASK_NAMES = {"object_mask": "the word's object mask", "all_objects_mask": "all objects' mask"}


def predictor_label(predictor: str) -> str:
    """A Table 4 predictor's legend label: its name, or for a difference ``<map>-<baseline>`` 'map - baseline'."""
    names = {**SCORE_NAMES, **MASK_NAMES}
    return " - ".join(names.get(p, p) for p in predictor.split("-"))


def intervention_panel(ax, rows: pd.DataFrame, ylabel: str) -> dict:
    """One Table 4 panel: grouped bars of ``rows`` (x: edit and level, one bar per predictor) with their 95%
    intervals, a line at 0; returns the bars' positions (``grouped_bars``)."""
    where = grouped_bars(ax, rows, "x", "predictor", list(INTERVENTION_COLOURS), "pearson",
                         colour=INTERVENTION_COLOURS.get, label=predictor_label, lo="ci_low", hi="ci_high")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return where


def plot_intervention(table: pd.DataFrame, png, pdf, title: str) -> None:
    """Table 4: Pearson correlation of the edit's change with CMI, with attention and, where the data set has masks,
    with the mask baselines (the edited word's object, all objects), image and pixel level, with the 95% bootstrap
    intervals; below them, for a (model, data set) with baselines, each map's paired difference with each baseline
    (above 0: the map predicts the change better than the mask; a data set without masks says so there)."""
    apply_style()
    table = table.assign(x=table["edit"] + " · " + table["level"],
                         difference=table["predictor"].str.contains("-", regex=False))
    facets = list(table.groupby(["model", "dataset"], sort=False))
    n_rows = 2 if table["difference"].any() else 1
    fig, axes = plt.subplots(n_rows, len(facets), figsize=(6.5 * len(facets), 3.6 * n_rows), squeeze=False)
    for j, ((model, ds), g) in enumerate(facets):
        where = intervention_panel(axes[0, j], g[~g["difference"]], "Pearson r with the change (95% CI)")
        paper_stars(axes[0, j], where, g[~g["difference"]], "x", "predictor", "the paper (computed the same way)")
        axes[0, j].legend(fontsize=7)
        axes[0, j].set_title(f"{model} · {ds}")
        if n_rows == 1:
            continue
        if g["difference"].any():
            intervention_panel(axes[1, j], g[g["difference"]], "r(map) - r(mask), paired bootstrap (95% CI)")
        else:
            axes[1, j].axis("off")
            axes[1, j].text(0.5, 0.5, "no object masks: no mask baselines", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def intervention_examples(items: pd.DataFrame, n_examples: int = 3) -> pd.DataFrame:
    """The edits Fig. 3 shows: the omit edits with the largest change (any edits when there is no omission), with
    their row in intervention_maps.npz (``map_row``)."""
    rows = items.assign(map_row=np.arange(len(items)))
    omit = rows[rows["edit"] == "omit"].sort_values("change_total", ascending=False)
    return (omit if len(omit) else rows).head(n_examples)


def plot_intervention_examples(items: pd.DataFrame, pick: pd.DataFrame, maps: dict, images: dict[str, np.ndarray],
                               png, pdf, title: str) -> pd.DataFrame:
    """Fig. 3: for the ``pick`` edits (``intervention_examples``), the image, the change and the word's CMI and
    attention maps; beside them, every edit's image-level change against its CMI (nats), with each edit's least-squares
    line and its 95% bootstrap band (seaborn's, over the items)."""
    apply_style()
    if len(items) != len(maps["change"]):
        raise ReportError(f"intervention_items.csv has {len(items)} rows but intervention_maps.npz "
                          f"{len(maps['change'])} maps")
    fig = plt.figure(figsize=(12, 2.4 * max(2, len(pick))))
    grid = fig.add_gridspec(len(pick), 6)
    for r, row in enumerate(pick.itertuples()):
        image = images[row.sample_id]
        panels = [("change", maps["change"][row.map_row]), ("cmi", maps["cmi"][row.map_row]),
                  ("attention_regen", maps["attention_regen"][row.map_row])]
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{row.sample_id}\n{row.edit} '{row.word}'", fontsize=7)
        for c, (kind, heat) in enumerate(panels, 1):
            ax = fig.add_subplot(grid[r, c])
            overlay(ax, image, heat / max(float(heat.max()), 1e-12), 1.0)
            if r == 0:
                ax.set_title({"change": "change (sq. pixel diff.)", **SCORE_NAMES}.get(kind, kind), fontsize=8)
    ax = fig.add_subplot(grid[:, 4:])
    edits = sorted(set(items["edit"]))
    for edit, colour in zip(edits, sns.color_palette(n_colors=len(edits))):
        g = items[items["edit"] == edit]
        sns.regplot(g, x="cmi_s_nats", y="change_total", ax=ax, color=colour, label=f"{edit} ({len(g)})",
                    fit_reg=g["cmi_s_nats"].nunique() > 1, seed=0, scatter_kws={"s": 12, "alpha": 0.7},
                    line_kws={"lw": 1})
    ax.set_xlabel("CMI of the word, i^s total (nats; the public code's image-level score)")
    ax.set_ylabel("image-level change (sum of squared differences)")
    ax.legend(fontsize=7)
    fig.suptitle(title + " (maps scaled to their maximum)")
    fig.tight_layout()
    save_figure(fig, png, pdf)
    return pick.drop(columns="map_row")
