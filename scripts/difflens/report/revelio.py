"""Revelio's paper items from the SAE summaries (``sae/<model>/<data set>/summary.csv``) and the accuracy tables
(``classify/<model>/<data set>/accuracy.csv``): Table 2a-d (sigma_label and purity by layer, timestep, model and DiT
block, beside the random-image baseline and the untrained-SAE and random-direction controls), the top-image grids
(Fig. 3/5/7/9), Diff-C accuracy by layer, timestep and architecture (Fig. 4/6/8), the accuracy tables (Tables 3 and
5) and the PCA views (Fig. 10)."""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from .style import BASELINE, Palette, apply_style, grouped_bars, heat_map, plt, save_figure

SAE_COLUMNS = ["model", "dataset", "run", "input", "layer", "timestep", "sigma_definition", "sigma_label", "purity",
               "sigma_eligible", "null_sigma_mean_p5", "null_sigma_mean_p95", "null_sigma_p_value",
               "null_purity_mean_p5", "null_purity_mean_p95", "null_purity_p_value", "null_purity_beyond_share",
               "null_purity_beyond_chance", "null_purity_beyond_p_value", "better_than_random",
               "sigma_label_sparse", "purity_sparse", "sigma_label_public_code", "purity_public_code",
               "random_sigma_mean", "random_sigma_p5", "random_sigma_p95", "random_purity_mean", "random_purity_p5",
               "random_purity_p95", "untrained_sigma_label", "untrained_purity", "untrained_null_purity_p_value",
               "random_directions_sigma_label", "random_directions_purity", "random_directions_null_purity_p_value",
               "live_latents", "n_latents", "split"]
#: the controls of every SAE (difflens.sae.controls), as named in the summary's columns
CONTROLS = {"untrained": "untrained SAE", "random_directions": "random directions"}
METRICS = {"sigma_label": "sigma_label (lower = purer)", "purity": "top-10 purity (majority share)"}
AXES = ("layer", "timestep", "model", "dit")
_BLOCK = re.compile(r"(\d+)$")
log = logging.getLogger(__name__)


class ReportError(ValueError):
    """A table cannot be drawn from what it was given (named in the message)."""


def argmax_rows(table: pd.DataFrame, keys: list[str], column: str) -> pd.Index:
    """Per group of ``keys``, the index of the row with the largest ``column`` (NaN counts as lowest, so a group
    whose values are all undefined, e.g. no latent eligible for purity, still gives its first row)."""
    return table.assign(_v=table[column].astype(float).fillna(-np.inf)).groupby(keys)["_v"].idxmax()


def block_index(layer: str) -> int:
    """The block number at the end of a DiT layer name (``transformer_blocks.13`` -> 13)."""
    m = _BLOCK.search(str(layer))
    if not m:
        raise ReportError(f"DiT layer {layer!r} does not end in a block number")
    return int(m.group(1))


# ---- Table 2a-d: sigma_label and purity ---------------------------------------------------------------------------
def sae_table(summary: pd.DataFrame, axis: str, dit_models: list[str] = (), palette: Palette | None = None):
    """Table 2 along ``axis`` (layer | timestep | model | dit): one row per SAE (``model`` adds the mean, min and
    max over a model's layers per timestep and its purest layer), with the null of random image sets (the mean over
    as many random 10-image sets as the SAE has eligible latents: its 5th-95th percentile and one-sided p-value; the
    share of latents above the single-set 95th percentile against chance; ``better_than_random``), the single-set
    band, both sigma definitions and the controls (the untrained SAE's and the random directions' sigma_label,
    purity and null p-value) beside it."""
    if axis not in AXES:
        raise ReportError(f"axis {axis!r} is not one of {AXES}")
    if summary.empty:
        raise ReportError("no SAE summaries to tabulate (sae.runs is empty?)")
    cols = [c for c in SAE_COLUMNS if c in summary.columns]
    table = summary[cols].copy()
    table["timestep"] = table["timestep"].astype(int)
    if axis == "dit":
        table = table[table["model"].isin(dit_models)].copy()
        if table.empty:
            raise ReportError(f"no SAE of a DiT model in the summaries (DiT models: {list(dit_models) or 'none'})")
        table.insert(5, "block", [block_index(l) for l in table["layer"]])
        return table.sort_values(["model", "dataset", "run", "input", "timestep", "block"], ignore_index=True)
    if axis == "model":
        keys = ["model", "dataset", "run", "input", "timestep"]
        g = table.groupby(keys, sort=False)
        out = g.agg(sigma_label=("sigma_label", "mean"), sigma_label_min=("sigma_label", "min"),
                    sigma_label_max=("sigma_label", "max"), purity=("purity", "mean"),
                    purity_min=("purity", "min"), purity_max=("purity", "max"),
                    random_sigma_mean=("random_sigma_mean", "mean"),
                    random_purity_mean=("random_purity_mean", "mean"),
                    **{c: (c, "mean") for c in cols if c.startswith("null_") or c == "better_than_random"},
                    **{c: (c, "mean") for c in cols if c.startswith(tuple(CONTROLS))},
                    layers=("layer", "count")).reset_index()
        best = table.loc[argmax_rows(table, keys, "purity")].set_index(keys)["layer"]
        out["purest_layer"] = [best.loc[tuple(r)] for r in out[keys].itertuples(index=False)]
        return out.sort_values(["dataset", "run", "input", "timestep", "model"], ignore_index=True)
    order = palette.layer_order(table["layer"]) if palette else sorted(set(table["layer"]))
    models = palette.model_order(table["model"]) if palette else sorted(set(table["model"]))
    table["_layer"] = table["layer"].map({l: i for i, l in enumerate(order)})
    table["_model"] = table["model"].map({m: i for i, m in enumerate(models)})
    inner = ["timestep", "_layer"] if axis == "layer" else ["_layer", "timestep"]
    table = table.sort_values(["_model", "dataset", "run", "input", *inner], ignore_index=True)
    return table.drop(columns=["_layer", "_model"])


def _facets(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    return list(table.groupby(["dataset", "run", "input"], sort=False))


def plot_sae_table(table: pd.DataFrame, axis: str, palette: Palette, png, pdf, title: str) -> None:
    """Two panels per (data set, SAE run, input): sigma_label and purity along the axis, the untrained SAE's as a
    dotted line of the same colour (bars: its mean as a dotted black line), the random-image baseline's mean dashed
    in grey with the band of the null of the *mean* over as many random sets as eligible latents (5th-95th
    percentile) around it; a ring marks each SAE whose mean purity beats that null (p < 0.05)."""
    apply_style()
    facets = _facets(table)
    fig, axes = plt.subplots(len(facets), 2, figsize=(10, 3.2 * len(facets)), squeeze=False)
    for row, ((ds, run, inp), g) in enumerate(facets):
        for col, metric in enumerate(METRICS):
            ax = axes[row, col]
            if axis == "model":
                _model_bars(ax, g, metric, palette)
            else:
                _sae_lines(ax, g, axis, metric, palette)
            _random_band(ax, g, metric, axis)
            if metric == "sigma_label":
                _paper_note(ax, g)
            ax.set_ylabel(METRICS[metric])
            ax.set_title(f"{ds} · SAE {run} ({inp})")
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def _sae_lines(ax, g: pd.DataFrame, axis: str, metric: str, palette: Palette) -> None:
    if axis in ("layer", "dit"):
        xcol = "block" if axis == "dit" else "layer"
        order = sorted(set(g["block"])) if axis == "dit" else palette.layer_order(g["layer"])
        for (model, t), s in g.groupby(["model", "timestep"]):
            s = s.assign(_x=s[xcol].map({v: i for i, v in enumerate(order)})).sort_values("_x")
            ax.plot(s["_x"], s[metric], marker=palette.marker(model), ls=palette.linestyle(model),
                    color=palette.timestep(t), label=f"{model} t={t}")
            _control_line(ax, s["_x"], s, metric, palette.timestep(t))
            _better_marks(ax, s["_x"], s, metric)
            _paper_marks(ax, s["_x"], s, metric, palette.timestep(t))
        ax.set_xticks(range(len(order)), [str(v) for v in order], rotation=30, ha="right")
        ax.set_xlabel("DiT block" if axis == "dit" else "layer")
    else:
        for (model, layer), s in g.groupby(["model", "layer"], sort=False):
            s = s.sort_values("timestep")
            ax.plot(s["timestep"], s[metric], marker=palette.marker(model), ls=palette.linestyle(model),
                    color=palette.layer(layer), label=f"{model} {layer}")
            _control_line(ax, s["timestep"], s, metric, palette.layer(layer))
            _better_marks(ax, s["timestep"], s, metric)
            _paper_marks(ax, s["timestep"], s, metric, palette.layer(layer))
        ax.set_xlabel("timestep (of 1000; larger = noisier)")


def _model_bars(ax, g: pd.DataFrame, metric: str, palette: Palette) -> None:
    order = palette.model_order(g["model"])
    g = g.sort_values("model", key=lambda m: m.map(order.index))
    grouped_bars(ax, g, "model", "timestep", sorted(set(g["timestep"])), metric, colour=palette.timestep,
                 label=lambda t: f"t={t}", lo=f"{metric}_min", hi=f"{metric}_max")
    ax.set_xlabel("model (bar: mean over layers; whiskers: min-max)")
    if f"untrained_{metric}" in g:
        ax.axhline(g[f"untrained_{metric}"].mean(), color="k", ls=":", lw=1, label="untrained SAE (mean)")


def _once(ax, label: str) -> str:
    """``label`` for the first artist of a panel that carries it, "_" (no legend entry) for the later ones."""
    artists = [*ax.get_lines(), *ax.collections]
    return "_" if any(a.get_label() == label for a in artists) else label


def _control_line(ax, x, s: pd.DataFrame, metric: str, colour) -> None:
    """The untrained SAE's ``metric`` along the same x, dotted, labelled once per panel."""
    if f"untrained_{metric}" not in s:
        return
    ax.plot(x, s[f"untrained_{metric}"], ls=":", lw=1, color=colour, label=_once(ax, "untrained SAE (dotted)"))


def _better_marks(ax, x, s: pd.DataFrame, metric: str) -> None:
    """A ring around each SAE whose mean purity beats the null of random sets (``better_than_random``)."""
    if "better_than_random" not in s:
        return
    hit = s["better_than_random"].astype(bool).to_numpy()
    ax.scatter(np.asarray(x)[hit], s[metric].to_numpy()[hit], s=90, facecolors="none", edgecolors="k", lw=0.8,
               label=_once(ax, "beats the null (p < 0.05)") if hit.any() else "_", zorder=3)


def _paper_marks(ax, x, s: pd.DataFrame, metric: str, colour) -> None:
    """The paper's number (a star) beside ours where model, data set, protocol, layer and timestep match
    (``paper.compare``'s ``paper_value``): sigma_label in Table 2, test accuracy in Fig. 4/6/8 and Table 5."""
    if metric not in ("sigma_label", "test_accuracy") or "paper_value" not in s or s["paper_value"].isna().all():
        return
    hit = s["paper_value"].notna().to_numpy()
    ax.scatter(np.asarray(x)[hit], s["paper_value"].to_numpy()[hit], marker="*", s=80, color=colour,
               edgecolors="k", lw=0.5, label=_once(ax, "paper (star)"), zorder=4)


def _paper_note(ax, g: pd.DataFrame) -> None:
    """Under a panel with no paper number drawn: why not (the first of ``paper_differs``' reasons)."""
    if "paper_differs" not in g or g["paper_value"].notna().any():
        return
    reasons = [r for r in dict.fromkeys(g["paper_differs"]) if r]
    if reasons:
        ax.text(0.01, 0.01, f"no paper number: {reasons[0]}", transform=ax.transAxes, fontsize=5, color="0.35",
                va="bottom", wrap=True)


def _random_band(ax, g: pd.DataFrame, metric: str, axis: str) -> None:
    key = "sigma" if metric == "sigma_label" else "purity"
    mean = g[f"random_{key}_mean"].mean()
    ax.axhline(mean, color=BASELINE, ls="--", lw=1, label="random images")
    lo, hi = f"null_{key}_mean_p5", f"null_{key}_mean_p95"
    if axis != "model" and {lo, hi} <= set(g.columns):
        ax.axhspan(g[lo].mean(), g[hi].mean(), color=BASELINE, alpha=0.12, lw=0,
                   label="null of the mean (5th-95th pct)")


# ---- Fig. 4/6/8, Tables 3 and 5: classifier accuracy --------------------------------------------------------------
def with_stderr(acc: pd.DataFrame, n_test: dict[str, int]) -> pd.DataFrame:
    """The accuracy table with the binomial standard error of each test accuracy (n = the data set's test split)."""
    out = acc.copy()
    n = out["dataset"].map(n_test).astype(float)
    p = out["test_accuracy"].astype(float)
    out["n_test"] = n
    out["test_stderr"] = np.sqrt(p * (1 - p) / n)
    return out


def focus_targets(acc: pd.DataFrame) -> pd.DataFrame:
    """The rows of the targets Diff-C was trained on (the probes' other attribute columns belong to the shapes
    world's attribute figure), or of ``label`` when there is no Diff-C."""
    targets = set(acc.loc[acc["classifier"] == "diffc", "target"])
    if not targets:
        log.info("no Diff-C rows: the accuracy items show the linear probes' label rows only")
        targets = {"label"}
    return acc[acc["target"].isin(targets)]


def accuracy_table(acc: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Diff-C and linear-probe accuracy along ``axis`` (layer | timestep): every row of the model's own features
    (external baselines have no layer or timestep)."""
    rows = acc[acc["classifier"].isin(["diffc", "linear_probe"]) & acc["timestep"].notna()].copy()  # no baselines
    if rows.empty:
        raise ReportError("no Diff-C or linear-probe rows in the accuracy tables")
    if axis not in ("layer", "timestep"):
        raise ReportError(f"axis {axis!r} is not one of layer, timestep (by architecture: best_by_validation)")
    rows["timestep"] = rows["timestep"].astype(int)
    return rows.sort_values(["dataset", "target", "classifier", "model", "timestep", "layer"], ignore_index=True)


def best_by_validation(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per (data set, target, classifier, model): the (layer, timestep) of the highest validation accuracy
    (external baselines have one row each), with its test accuracy."""
    keys = ["dataset", "target", "classifier", "model"]
    acc = acc.dropna(subset=["val_accuracy"])
    best = acc.loc[acc.groupby(keys)["val_accuracy"].idxmax()]
    return best.sort_values(["dataset", "target", "classifier", "test_accuracy"], ascending=[True, True, True, False],
                            ignore_index=True)


def plot_accuracy(table: pd.DataFrame, axis: str, palette: Palette, png, pdf, title: str) -> None:
    """Test accuracy (binomial standard error as whiskers) along the axis: one panel per (data set, target);
    Diff-C solid, linear probes dashed."""
    apply_style()
    facets = list(table.groupby(["dataset", "target"], sort=False))
    cols = min(3, len(facets))
    rows = int(np.ceil(len(facets) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(facets):]:
        ax.axis("off")
    for ax, ((ds, target), g) in zip(axes.flat, facets):
        if axis == "architecture":
            labels = [f"{r.model}\n{r.classifier}\n{r.layer} t{'' if pd.isna(r.timestep) else int(r.timestep)}"
                      for r in g.itertuples()]
            ax.bar(range(len(g)), g["test_accuracy"], yerr=g.get("test_stderr"), capsize=3,
                   color=[palette.model(m) for m in g["model"]],
                   hatch=None, alpha=0.9)
            ax.set_xticks(range(len(g)), labels, fontsize=6)
            ax.set_xlabel("model, classifier, (layer, timestep) chosen on val")
            _paper_marks(ax, np.arange(len(g)), g, "test_accuracy", "k")
        else:
            for (clf, model, key), s in g.groupby(["classifier", "model", "timestep" if axis == "layer" else "layer"]):
                ls = "-" if clf == "diffc" else "--"
                colour = palette.timestep(key) if axis == "layer" else palette.layer(key)
                if axis == "layer":
                    order = palette.layer_order(g["layer"])
                    s = s.assign(_x=s["layer"].map({l: i for i, l in enumerate(order)})).sort_values("_x")
                    x = s["_x"]
                else:
                    s = s.sort_values("timestep")
                    x = s["timestep"]
                ax.errorbar(x, s["test_accuracy"], yerr=s.get("test_stderr"), fmt=palette.marker(model), ls=ls,
                            color=colour, capsize=2, ms=3,
                            label=f"{model} {clf} {'t=' if axis == 'layer' else ''}{key}")
                _paper_marks(ax, x, s, "test_accuracy", colour)
            if axis == "layer":
                order = palette.layer_order(g["layer"])
                ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
            ax.set_xlabel("layer" if axis == "layer" else "timestep (of 1000; larger = noisier)")
            ax.legend(fontsize=6, ncol=2)
        if "n_classes" in g and g["n_classes"].notna().any():
            ax.axhline(1 / g["n_classes"].max(), color=BASELINE, ls=":", lw=1)
        ax.set_ylabel("test accuracy (dotted: chance)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{ds} · {target}")
        _paper_note(ax, g)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def plot_accuracy_grid(acc: pd.DataFrame, png, pdf, title: str, palette: Palette) -> pd.DataFrame:
    """Table 3: Diff-C test accuracy as a layer x timestep grid per (model, data set, target), annotated; returns
    the tidy table behind it. ReportError when the accuracy table has no Diff-C row (the probes are no stand-in)."""
    apply_style()
    rows = acc[acc["classifier"] == "diffc"].copy()
    if rows.empty:
        raise ReportError(f"no Diff-C rows for the accuracy table (Table 3 shows Diff-C alone); the accuracy tables "
                          f"hold {sorted(set(acc['classifier']))}")
    rows["timestep"] = rows["timestep"].astype(int)
    facets = list(rows.groupby(["model", "dataset", "target", "classifier"], sort=False))
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.6), squeeze=False)
    for ax, ((model, ds, target, clf), g) in zip(axes[0], facets):
        times = sorted(set(g["timestep"]))
        heat_map(ax, g.assign(text=g["test_accuracy"].map("{:.2f}".format)), "layer", "timestep", "test_accuracy",
                 "text", rows=palette.layer_order(g["layer"]), cols=times, cmap="magma", annot_kws={"fontsize": 7},
                 xticklabels=[f"t={t}" for t in times], cbar_kws={"label": "test accuracy"})
        ax.set(xlabel="", ylabel="", title=f"{model} · {ds} · {target} ({clf})")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)
    return rows.sort_values(["model", "dataset", "target", "layer", "timestep"], ignore_index=True)


# ---- image mosaics: top images (Fig. 3/5/7/9) and PCA views (Fig. 10) ---------------------------------------------
def select_grids(summary: pd.DataFrame, axis: str, dit_models: list[str] = ()) -> pd.DataFrame:
    """Which SAEs a top-image figure shows: along layers at each model's first timestep (layer), along timesteps in
    each model's purest layer (timestep), each model's purest (layer, timestep) (model), DiT blocks at the first
    timestep (dit); one SAE run and input (the first) per model and data set."""
    s = summary.copy()
    s["timestep"] = s["timestep"].astype(int)
    first = s.groupby(["model", "dataset"])[["run", "input"]].transform("first")
    s = s[(s["run"] == first["run"]) & (s["input"] == first["input"])]
    if axis in ("layer", "dit"):
        if axis == "dit":
            s = s[s["model"].isin(dit_models)]
        t0 = s.groupby(["model", "dataset"])["timestep"].transform("min")
        return s[s["timestep"] == t0].reset_index(drop=True)
    if axis == "timestep":
        purest = s.groupby(["model", "dataset", "layer"])["purity"].mean().reset_index()
        purest = purest.loc[argmax_rows(purest, ["model", "dataset"], "purity")]
        return s.merge(purest[["model", "dataset", "layer"]]).sort_values("timestep", ignore_index=True)
    if axis == "model":
        return s.loc[argmax_rows(s, ["model", "dataset"], "purity")].reset_index(drop=True)
    raise ReportError(f"axis {axis!r} is not one of {AXES}")


def tile_pngs(panels: list[tuple[str, object]], png, pdf, title: str, cols: int = 1) -> None:
    """Already-rendered PNGs (title, path) tiled in a grid of ``cols`` columns, each under its title."""
    from PIL import Image

    apply_style()
    if not panels:
        raise ReportError(f"{title}: nothing to show")
    images = [np.asarray(Image.open(p).convert("RGB")) for _, p in panels]
    rows = int(np.ceil(len(panels) / cols))
    aspect = max(im.shape[1] / im.shape[0] for im in images)
    width = 14.0 if cols == 1 else 16.0
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * (width / cols) / aspect + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, _), im in zip(axes.flat, panels, images):
        ax.imshow(im)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def top_image_mosaic(shown: pd.DataFrame, images: dict[str, np.ndarray], png, pdf, title: str,
                     top: int = 10) -> None:
    """One row per shown latent (``shown``: rows of ``items._top_image_rows``), its top images left to right,
    labelled with its SAE (model, layer, timestep), id, purity and best attribute with its AUROC."""
    from ..sae.analysis import tile_images  # the SAE grids' mosaic (imports torch: only here)

    apply_style()
    records = shown.to_dict("records")
    mosaic, size, gap, pitch = tile_images([[images[s] for s in str(r["top_images"]).split()[:top]]
                                            for r in records], top)
    fig, ax = plt.subplots(figsize=(1.0 * top + 3.2, 0.95 * len(records) + 0.8))
    for r, row in enumerate(records):
        y = gap + r * pitch
        ax.text(-gap, y + size / 2, f"{row['model']} {row['layer']} t={int(row['timestep'])}\n#{row['latent']} "
                f"purity {row['purity']:.1f}\n{row['best_attribute']} (AUROC {row['auroc']:.2f})", ha="right",
                va="center", fontsize=6.5)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xlim(-size * 4.2, mosaic.shape[1])
    ax.set_ylim(mosaic.shape[0], 0)
    ax.axis("off")
    ax.set_title(title)
    save_figure(fig, png, pdf)
