"""The shapes world's own figure: which attribute is readable where (layer x timestep), from Diff-C, the linear
probes and the SAE's attribute matching, side by side. Each source is put on one readability scale, 0 = what a
model that learned nothing scores and 1 = perfect: (accuracy - majority) / (1 - majority) for the classifiers (the
test split's majority-class rate: 1 / number of classes only for balanced targets, and the honest floor for
unbalanced ones such as n_objects), and (AUROC - control) / (1 - control) for the SAE, where the control is the
same run's untrained SAE read the same way (its best latent's AUROC: on clustered features that is well above
0.5). Both per attribute value, averaged over the attribute's values. Below-control scores are negative (drawn
as 0)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .revelio import ReportError
from .style import Palette, apply_style, heat_map, plt, save_figure

SOURCES = {"diffc": "Diff-C (test accuracy)", "linear_probe": "linear probe (test accuracy)",
           "sae": "k-SAE best latent\n(AUROC; untrained SAE's)"}


def readability_table(acc: pd.DataFrame, sae: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, model, data set, layer, timestep, attribute): the raw score, its chance level (the
    majority-class rate, or the untrained SAE's AUROC: module docstring) and the readability (0 = chance, 1 =
    perfect). The class label counts as the attribute ``label``."""
    out = []
    own = acc[acc["classifier"].isin(["diffc", "linear_probe"]) & acc["timestep"].notna()]  # not external baselines
    if "majority_accuracy" not in own:
        raise ReportError("the accuracy table has no majority_accuracy column (made by an older difflens): rerun its "
                          "classify jobs (probe_features, train_diffc_<model>, collect_accuracy)")
    for r in own.to_dict("records"):
        chance = float(r["majority_accuracy"])
        out.append({"source": r["classifier"], "model": r["model"], "dataset": r["dataset"], "layer": r["layer"],
                    "timestep": int(r["timestep"]), "attribute": r["target"], "score": r["test_accuracy"],
                    "chance": chance})
    auroc_cols = [c for c in sae.columns if c.startswith("auroc:")]
    missing = [c for c in auroc_cols if f"untrained_{c}" not in sae]
    if missing:
        raise ReportError(f"the SAE summary has no untrained-control column for {missing[:3]} (made by an older "
                          "difflens): rerun train_sae and analyse_sae")
    for r in sae.to_dict("records"):
        per_attr: dict[str, list[tuple[float, float]]] = {}
        for c in auroc_cols:
            if pd.notna(r[c]):
                per_attr.setdefault(c.removeprefix("auroc:").split("=")[0], []).append(
                    (float(r[c]), float(r[f"untrained_{c}"])))
        for attr, values in per_attr.items():
            score, control = np.nanmean(np.array(values), axis=0)
            out.append({"source": "sae", "model": r["model"], "dataset": r["dataset"], "layer": r["layer"],
                        "timestep": int(r["timestep"]), "attribute": attr, "score": float(score),
                        "chance": float(control), "sae_run": f"{r['run']}/{r['input']}"})
    if not out:
        raise ReportError("no classifier or SAE rows to read attributes from")
    table = pd.DataFrame(out)
    table["readability"] = (table["score"] - table["chance"]) / (1 - table["chance"]).clip(lower=1e-9)
    return table


def plot_readability(table: pd.DataFrame, palette: Palette, png, pdf, title: str) -> None:
    """One heat map per (source, model, data set): rows layer @ timestep, columns attributes; colour =
    readability, text = the raw score (for the SAE, with its untrained control's below it in brackets)."""
    apply_style()
    facets = [(k, g) for k, g in table.groupby(["model", "dataset", "source"], sort=False)]
    facets.sort(key=lambda kg: (kg[0][0], kg[0][1], list(SOURCES).index(kg[0][2])))
    columns = []
    for (_, _, _), g in facets:
        names = sorted(set(g["attribute"]) - {"label"})
        columns.append(["label"] * ("label" in set(g["attribute"])) + names)
    fig, axes = plt.subplots(1, len(facets), figsize=(0.5 * sum(map(len, columns)) + 4, 5.2), squeeze=False,
                             gridspec_kw={"width_ratios": [max(1, len(c)) for c in columns]})
    index = [(l, t) for t in sorted(set(table["timestep"])) for l in palette.layer_order(table["layer"])]
    for k, (ax, ((model, ds, source), g), attrs) in enumerate(zip(axes[0], facets, columns)):
        g = g.groupby(["layer", "timestep", "attribute"], as_index=False)[["readability", "score", "chance"]].mean()
        text = [f"{v:.2f}\n({c:.2f})" if source == "sae" else f"{v:.2f}" for v, c in zip(g["score"], g["chance"])]
        heat_map(ax, g.assign(text=text), ["layer", "timestep"], "attribute", "readability", "text", rows=index,
                 cols=attrs, cmap="viridis", cbar=False, annot_kws={"fontsize": 6 if source != "sae" else 5},
                 yticklabels=[f"{l} @ t{t}" for l, t in index] if k == 0 else False)
        ax.set(xlabel="", ylabel="")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        ax.tick_params(axis="y", rotation=0, labelsize=7)
        ax.set_title(f"{SOURCES[source]}\n{model} · {ds}", fontsize=8)
    im = axes[0, 0].collections[0]  # one colour scale (0-1) for every panel
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02,
                 label="readability: 0 = chance (majority class; untrained SAE), 1 = perfect")
    fig.suptitle(title)
    save_figure(fig, png, pdf)
