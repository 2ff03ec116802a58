"""Kong et al.'s appendix items: the MMSE curves (info/<model>/<data set>/mmse_curves.csv: the denoising error
against log-SNR under the caption and the empty prompt, beside the Gaussian reference) and Appendix C's scatter of
each word's image-level MI, i(x; y) of the word alone against the empty prompt, against its CMI, i(x; y | c) given
the rest of the caption (localization_maps.npz: ``mi_nats``, ``cmi_nats``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from .revelio import ReportError
from .style import BASELINE, apply_style, plt, save_figure

#: the curves' colours (fixed in every MMSE figure)
PROMPT_COLOURS = {"caption": "#1f77b4", "empty": "#7f7f7f"}
PROMPT_NAMES = {"caption": "caption", "empty": "empty prompt (unconditional)"}
#: the columns of the MI-vs-CMI table (one row per word of the maps file)
MICMI_COLUMNS = ["model", "dataset", "sample_id", "word", "word_type", "mi_nats", "cmi_nats"]


# ---- MMSE against log-SNR -----------------------------------------------------------------------------------------
def _mmse():
    """difflens.info.mmse, imported when an MMSE item is drawn (it brings torch: every other figure job goes
    without)."""
    from ..info import mmse

    return mmse


def mmse_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (model, data set, level): the mean over images of each prompt's MMSE and of their gap (empty - caption,
    whose half-area is i^s) with standard errors over images, the Gaussian reference and the images' mean i^s inside
    the levels' range (``info.mmse.curve_information``). ``curves``: mmse_curves.csv with model and dataset
    columns."""
    if curves.empty:
        raise ReportError("no MMSE curve rows")
    keys = ["model", "dataset", "sample_id", "timestep", "logsnr"]
    wide = curves.pivot_table(index=keys, columns="prompt", values="mmse").reset_index()
    prompts = _mmse().PROMPTS
    missing = [p for p in prompts if p not in wide]
    if missing:
        raise ReportError(f"MMSE curves without the {missing} prompt rows")
    wide["gap"] = wide["empty"] - wide["caption"]
    level = wide.groupby(["model", "dataset", "timestep", "logsnr"], sort=False)
    out = level.agg(n_images=("sample_id", "nunique"), **{c: (c, "mean") for c in (*prompts, "gap")})
    for c in (*prompts, "gap"):
        out[f"{c}_se"] = level[c].std(ddof=1) / np.sqrt(out["n_images"])
    ref = curves.groupby(["model", "dataset", "timestep", "logsnr"], sort=False)["gaussian"].first()
    out = out.join(ref).reset_index()
    info = {k: _mmse().curve_information(g).mean() for k, g in curves.groupby(["model", "dataset"], sort=False)}
    out["i_s_nats"] = [info[(m, d)] for m, d in zip(out["model"], out["dataset"])]
    return out.sort_values(["model", "dataset", "logsnr"], kind="stable").reset_index(drop=True)


def plot_mmse(table: pd.DataFrame, png, pdf, title: str) -> None:
    """One column per (model, data set): above, the mean MMSE of each prompt against log-SNR (bands: +- 1 standard
    error over images) and the Gaussian reference, on a log scale; below, the gap (empty - caption) whose half-area is
    the images' mean i^s."""
    apply_style()
    facets = list(table.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(2, len(facets), figsize=(5.2 * len(facets), 6.4), squeeze=False, sharex="col",
                             height_ratios=[3, 2])
    for (top, bottom), ((model, ds), g) in zip(axes.T, facets):
        for p in _mmse().PROMPTS:
            _curve(top, g, p, PROMPT_COLOURS[p], f"{PROMPT_NAMES[p]} ({int(g['n_images'].max())} images)")
        if g["gaussian"].notna().any():
            top.plot(g["logsnr"], g["gaussian"], color=BASELINE, ls="--", lw=1,
                     label="Gaussian, the data's variances")
        top.set_yscale("log")
        top.set_ylabel("MMSE, E||eps - eps_hat||^2")
        top.set_title(f"{model} · {ds}")
        top.legend(fontsize=7)
        _curve(bottom, g, "gap", PROMPT_COLOURS["caption"], "empty - caption")
        bottom.axhline(0, color="grey", ls=":", lw=1)
        bottom.set_ylabel("MMSE gap")
        bottom.set_xlabel("log-SNR a")
        bottom.set_title(f"1/2 area = i^s: {g['i_s_nats'].iloc[0]:.2f} nats (mean over images)", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


def _curve(ax, g: pd.DataFrame, column: str, colour, label: str) -> None:
    """A mean curve with its +- 1 standard error band (the table's own: seaborn estimates none)."""
    sns.lineplot(g, x="logsnr", y=column, color=colour, marker="o", markersize=3, label=label, errorbar=None, ax=ax)
    se = g[f"{column}_se"].fillna(0)
    ax.fill_between(g["logsnr"], g[column] - se, g[column] + se, color=colour, alpha=0.2, lw=0)


# ---- Appendix C: MI against CMI -----------------------------------------------------------------------------------
def micmi_table(maps: dict, model: str, dataset: str) -> pd.DataFrame:
    """The ``MICMI_COLUMNS`` rows of one maps file (localization_maps.npz or word_maps.npz, read as a dict)."""
    missing = [k for k in ("sample_id", "word", "word_type", "mi_nats", "cmi_nats") if k not in maps]
    if missing:
        raise ReportError(f"maps of {model} on {dataset} lack {missing}: remake them with collect_localization")
    return pd.DataFrame({"model": model, "dataset": dataset, "sample_id": maps["sample_id"].astype(str),
                         "word": maps["word"].astype(str), "word_type": maps["word_type"].astype(str),
                         "mi_nats": maps["mi_nats"].astype(float), "cmi_nats": maps["cmi_nats"].astype(float)},
                        columns=MICMI_COLUMNS)


def plot_micmi(table: pd.DataFrame, png, pdf, title: str) -> None:
    """One panel per (model, data set): each word's MI against its CMI, coloured by word type (legend: rows and
    Pearson r per type), with the diagonal MI = CMI."""
    apply_style()
    if table.empty:
        raise ReportError("no word rows in the maps")
    facets = list(table.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, len(facets), figsize=(5.0 * len(facets), 4.4), squeeze=False)
    types = list(dict.fromkeys(table["word_type"]))
    colours = dict(zip(types, sns.color_palette(n_colors=len(types))))
    for ax, ((model, ds), g) in zip(axes[0], facets):
        for t, rows in g.groupby("word_type", sort=False):
            r = rows["mi_nats"].corr(rows["cmi_nats"]) if len(rows) > 2 else float("nan")
            sns.scatterplot(rows, x="mi_nats", y="cmi_nats", color=colours[t], s=14, alpha=0.7, linewidth=0,
                            label=f"{t} ({len(rows)}, r = {r:.2f})", ax=ax)
        top = float(np.nanmax(g[["mi_nats", "cmi_nats"]].to_numpy())) if len(g) else 1.0
        lo = min(0.0, float(np.nanmin(g[["mi_nats", "cmi_nats"]].to_numpy())))
        ax.plot([lo, top], [lo, top], color="grey", ls=":", lw=1, label="MI = CMI")
        ax.set_xlabel("MI of the word alone, i(x; y) (nats)")
        ax.set_ylabel("CMI given the rest of the caption, i(x; y | c) (nats)")
        ax.set_title(f"{model} · {ds}")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)
