"""The information stage's own plots (the figure stage draws the paper's)."""
from __future__ import annotations

import pandas as pd


def margin_scatter(outcomes: pd.DataFrame, path, title: str = "") -> None:
    """Per item, the true caption's margin over the best negative under i^o (y) against i^s (x), nats, one colour
    per kind: points right of x = 0 are items i^s gets right, points above y = 0 those i^o gets right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = outcomes.pivot_table(index=["item", "kind"], columns="score", values="margin_nats").reset_index()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for kind, g in wide.groupby("kind"):
        ax.scatter(g["i_s"], g["i_o"], s=10, alpha=0.6, label=f"{kind} ({len(g)})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("i^s margin: true - best negative (nats)")
    ax.set_ylabel("i^o margin: true - best negative (nats)")
    ax.set_title(title or "per-item caption margins")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
