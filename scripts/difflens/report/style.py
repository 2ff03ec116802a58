"""One look for every figure: a seaborn theme with readable matplotlib defaults (``RC``), one colour per model, layer
and timestep everywhere (the palette is built from the config's order, so a layer keeps its colour across figures and
runs), PNG + PDF output. The figures draw through seaborn from long-form tables (heat maps, bars with the tables' own
intervals, scatters with a fitted line)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

RC = {"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
      "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False}
#: fixed colours of the information scores and map kinds (the same in every information figure)
SCORE_COLOURS = {"i_s": "#1f77b4", "i_o": "#ff7f0e", "err": "#2ca02c", "whole_image": "#7f7f7f", "mi": "#9467bd",
                 "cmi": "#d62728", "cmi_s": "#e377c2", "attention_itd": "#17becf", "attention_ddim": "#bcbd22",
                 "attention_regen": "#bcbd22", "attention+cmi": "#8c564b"}
SCORE_NAMES = {"i_s": "i^s (standard)", "i_o": "i^o (orthogonal)", "err": "denoising error",
               "whole_image": "whole image", "mi": "MI", "cmi": "CMI (i^o)", "cmi_s": "CMI (i^s)",
               "attention_itd": "attention on the draws (DAAM)", "attention_ddim": "attention, DDIM inversion (DAAM)",
               "attention_regen": "attention during regeneration (DAAM)", "attention+cmi": "attention + CMI"}
BASELINE = "#555555"


def shade(colour: str, factor: float) -> str:
    """``colour`` (hex) lighter (``factor`` > 1: towards white) or darker (< 1: towards black)."""
    rgb = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    out = [1 - (1 - c) / factor if factor > 1 else c * factor for c in rgb]
    return "#" + "".join(f"{round(255 * c):02x}" for c in out)


#: the seaborn theme under ``RC`` (which wins where both set a value): white background with a light grid, paper-sized
#: text, tab10 as the colour cycle (the models' colours, ``Palette.model``)
THEME = {"context": "paper", "style": "whitegrid", "palette": "tab10"}
#: the whiskers drawn on bars from a table's own interval columns
ERRORBAR = {"fmt": "none", "ecolor": ".26", "elinewidth": 1.0, "capsize": 2}


def apply_style() -> None:
    sns.set_theme(**THEME, rc=RC)


@dataclass
class Palette:
    """Colours keyed by name: models and layers in the config's order (tab10 / tab20), timesteps by rank on a
    sequential map (the rules pass the lists, common.smk's ``palette_spec``); a name it has not seen gets a grey."""
    models: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)

    def model(self, name: str):
        return _pick("tab10", self.models, name)

    def layer(self, name: str):
        return _pick("tab20", self.layers, name)

    def timestep(self, t) -> tuple:
        if int(t) not in self.timesteps:
            return (0.5, 0.5, 0.5, 1.0)
        rank = self.timesteps.index(int(t))
        return matplotlib.colormaps["viridis"](0.05 + 0.85 * rank / max(1, len(self.timesteps) - 1))

    def marker(self, model: str) -> str:
        """One marker per model, so two models with the same layer names stay apart."""
        return _pick(["o", "s", "^", "D", "v", "P"], self.models, model, "x")

    def linestyle(self, model: str) -> str:
        return _pick(["-", "--", ":", "-."], self.models, model, "-")

    def layer_order(self, names) -> list[str]:
        """``names`` sorted by the config's layer order (unknown names last, alphabetically)."""
        return _in_order(self.layers, names)

    def model_order(self, names) -> list[str]:
        """``names`` sorted by the config's model order (unknown names last, alphabetically)."""
        return _in_order(self.models, names)


def _in_order(order: list[str], names) -> list[str]:
    known = {n: i for i, n in enumerate(order)}
    return sorted(set(names), key=lambda n: (known.get(n, len(known)), str(n)))


def _pick(choices, order: list[str], name: str, unknown=(0.5, 0.5, 0.5, 1.0)):
    """The choice (a colour map's name, or a list) cycled by ``name``'s place in ``order``; ``unknown`` if absent."""
    if name not in order:
        return unknown
    choices = matplotlib.colormaps[choices].colors if isinstance(choices, str) else choices
    return choices[order.index(name) % len(choices)]


def grouped_bars(ax, table, x: str, hue: str, hues, value: str, *, colour, label=str, err: str | None = None,
                 lo: str | None = None, hi: str | None = None) -> dict:
    """Grouped bars (``sns.barplot`` of the long-form ``table``, one row per bar): one group per value of ``x`` (in
    order of appearance), one bar per ``hue`` present (in the order of ``hues``), coloured and labelled by
    ``colour(h)`` / ``label(h)``; whiskers from the column ``err`` (symmetric) or the columns ``lo`` / ``hi`` (the
    table's own intervals: seaborn estimates none). Returns {hue: bar positions, one per x} for marks drawn on
    top."""
    xs = list(dict.fromkeys(table[x]))
    hues = [h for h in hues if h in set(table[hue])]
    names = {h: label(h) for h in hues}
    rows = table[table[hue].isin(hues)]
    labels = ax.get_xlabel(), ax.get_ylabel()
    sns.barplot(rows.assign(**{hue: rows[hue].map(names)}), x=x, y=value, hue=hue, order=xs,
                hue_order=list(names.values()), palette={names[h]: colour(h) for h in hues}, errorbar=None, ax=ax)
    ax.set(xlabel=labels[0], ylabel=labels[1])  # seaborn's column names are no axis labels
    width = 0.8 / max(1, len(hues))  # seaborn's dodge: the group's 0.8 split evenly, in hue order
    where = {h: np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width for j, h in enumerate(hues)}
    rows = rows.dropna(subset=[value])
    if err is not None and err in rows:
        yerr = rows[err].fillna(0).to_numpy(float)
    elif lo is not None:
        yerr = np.vstack([(rows[value] - rows[lo]).clip(lower=0), (rows[hi] - rows[value]).clip(lower=0)])
    else:
        return where
    ax.errorbar([where[h][xs.index(v)] for h, v in zip(rows[hue], rows[x])], rows[value].to_numpy(float),
                yerr=np.nan_to_num(np.asarray(yerr, float)), **ERRORBAR)
    return where


def heat_map(ax, table, index, columns: str, value: str, text: str, *, rows: list, cols: list, **kws):
    """``sns.heatmap`` of the long-form ``table``: a cell per (``index``, ``columns``) pair in the order ``rows`` x
    ``cols``, coloured by the mean ``value`` on a 0-1 scale and annotated with the string column ``text`` (seaborn
    picks the ink for the cell's colour); empty where the table has no row. ``kws`` go to ``sns.heatmap``. Returns the
    grid of values."""
    grid, words = (table.pivot_table(index=index, columns=columns, values=v, aggfunc=how)
                   .reindex(index=rows, columns=cols) for v, how in ((value, "mean"), (text, "first")))
    sns.heatmap(grid, vmin=0, vmax=1, annot=words.fillna("").to_numpy(object), fmt="", ax=ax, **kws)
    ax.grid(False)
    return grid


def save_figure(fig, png: str | Path, pdf: str | Path | None = None) -> None:
    """Write the figure as PNG (and PDF, without a creation date, so that a rerun gives the same bytes) and close
    it."""
    fig.savefig(png, bbox_inches="tight")
    if pdf:
        fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def note_figure(png, pdf, title: str, text: str) -> None:
    """A figure that says why it has nothing to plot (for instance no data set with masks), so that the target
    exists and the report shows the reason."""
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_title(title)
    save_figure(fig, png, pdf)
