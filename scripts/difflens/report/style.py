"""One look for every figure: readable matplotlib defaults, one colour per model, layer and timestep everywhere (the
palette is built from the config's order, so a layer keeps its colour across figures and runs), PNG + PDF output."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RC = {"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
      "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False}
#: fixed colours of the information scores and map kinds (the same in every information figure)
SCORE_COLOURS = {"i_s": "#1f77b4", "i_o": "#ff7f0e", "err": "#2ca02c", "whole_image": "#7f7f7f", "mi": "#9467bd",
                 "cmi": "#d62728", "attention": "#17becf", "attention+cmi": "#8c564b"}
SCORE_NAMES = {"i_s": "i^s (standard)", "i_o": "i^o (orthogonal)", "err": "denoising error",
               "whole_image": "whole image", "mi": "MI", "cmi": "CMI", "attention": "attention (DAAM)",
               "attention+cmi": "attention + CMI"}
BASELINE = "#555555"


def apply_style() -> None:
    plt.rcParams.update(RC)


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
    """Grouped bars: one group per value of ``x`` (in order of appearance), one bar per ``hue`` present (in the
    order of ``hues``), coloured and labelled by ``colour(h)`` / ``label(h)``; whiskers from the column ``err``
    (symmetric) or the columns ``lo`` / ``hi``. Returns {hue: bar positions} for marks drawn on top."""
    xs = list(dict.fromkeys(table[x]))
    hues = [h for h in hues if h in set(table[hue])]
    width = 0.8 / max(1, len(hues))
    where = {}
    for j, h in enumerate(hues):
        s = table[table[hue] == h].set_index(x).reindex(xs)
        where[h] = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        yerr = None
        if err is not None and err in s:
            yerr = s[err].fillna(0).to_numpy(float)
        elif lo is not None:
            yerr = np.vstack([(s[value] - s[lo]).clip(lower=0), (s[hi] - s[value]).clip(lower=0)]).astype(float)
        ax.bar(where[h], s[value], width, yerr=yerr, capsize=2, color=colour(h), label=label(h))
    ax.set_xticks(range(len(xs)), xs)
    return where


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
