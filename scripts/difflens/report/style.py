"""One look for every figure: readable matplotlib defaults, one colour per model, layer and timestep everywhere (the
palette is built from the config's order, so a layer keeps its colour across figures and runs), PNG + PDF output."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

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

    def layer_order(self, names) -> list[str]:
        """``names`` sorted by the config's layer order (unknown names last, alphabetically)."""
        known = {n: i for i, n in enumerate(self.layers)}
        return sorted(set(names), key=lambda n: (known.get(n, len(known)), str(n)))


def _pick(cmap: str, order: list[str], name: str):
    if name not in order:
        return (0.5, 0.5, 0.5, 1.0)
    colours = matplotlib.colormaps[cmap].colors
    return colours[order.index(name) % len(colours)]


def save_figure(fig, png: str | Path, pdf: str | Path | None = None) -> None:
    """Write the figure as PNG (and PDF) and close it."""
    fig.savefig(png, bbox_inches="tight")
    if pdf:
        fig.savefig(pdf, bbox_inches="tight")
    plt.close(fig)


def note_figure(png, pdf, title: str, text: str) -> None:
    """A figure that says why it has nothing to plot (for instance no data set with masks), so that the target
    exists and the report shows the reason."""
    fig, ax = plt.subplots(figsize=(7, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_title(title)
    save_figure(fig, png, pdf)
