"""The information stage's own plots (the figure stage draws the paper's, in ``report.style``'s theme, which this
stage may not import: tests/test_packages.py), drawn with seaborn's paper-sized white-grid theme."""
from __future__ import annotations

import pandas as pd


def margin_scatter(outcomes: pd.DataFrame, path, title: str = "") -> None:
    """Per item, the true caption's margin over the best negative under i^o (y) against i^s (x), nats, one colour
    per kind (``sns.scatterplot`` of one row per item and kind): points right of x = 0 are items i^s gets right,
    points above y = 0 those i^o gets right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    wide = outcomes.pivot_table(index=["item", "kind"], columns="score", values="margin_nats").reset_index()
    counts = wide["kind"].value_counts()
    wide["kind"] = [f"{kind} ({counts[kind]})" for kind in wide["kind"]]
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):  # text takes the sizes it is made with
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        sns.scatterplot(wide, x="i_s", y="i_o", hue="kind", hue_order=sorted(set(wide["kind"])), s=10, alpha=0.6,
                        linewidth=0, ax=ax)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("i^s margin: true - best negative (nats)")
        ax.set_ylabel("i^o margin: true - best negative (nats)")
        ax.set_title(title or "per-item caption margins")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
