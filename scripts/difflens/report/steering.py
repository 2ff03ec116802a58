"""The steering items, from each steered SAE's folder ``steer/<model>/<data set>/<run>/<input>/t<t>/<layer>/`` (rule
steer_latents): the grid of its images under each edit (a row per steered latent, the unedited regeneration first,
then each edit), the specificity table (per latent and edit: on the shapes world the success rate over the eligible
images, the off-target rates, the presence of the word's value before and after; everywhere the mean change) and the
causal plot (Pearson r of the edit's change with the word's CMI map and with the latent's heat map, image and pixel
level, with the 95% bootstrap intervals). The summary page quotes each latent's best edit (``best_edits``)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .inputs import read_csv, read_npz
from .revelio import ReportError, argmax_rows
from .style import SCORE_COLOURS, apply_style, heat_map, note_figure, plt, save_figure

#: the columns that name a steered SAE (the parts of its folder)
SAE_KEYS = ("model", "dataset", "run", "input", "timestep", "layer")
#: images of each edit the grid shows (the first of images.npz's), and the largest side they are drawn at
PER_CELL, CELL_PX = 2, 128
#: effects.csv's rates (0-1), presences and change, in the specificity table's column order, with their headers
RATES = ("success_rate", "off_target_rate", "count_rate", "other_rate", "position_rate", "lowered",
         "control_success_rate", "control_off_target_rate")
PRESENCE = ("presence_before", "presence_after")
SPECIFICITY = {"success_rate": "success\n(of eligible)", "off_target_rate": "off target\n(any)",
               "count_rate": "object count\nchanged", "other_rate": "other attribute\nchanged",
               "position_rate": "object\nmoved", "lowered": "value lowered\n(images with it)",
               "presence_before": "presence\nbefore", "presence_after": "presence\nafter",
               "mean_change": "mean change\n(sq. latent diff.)",
               "control_success_rate": "untrained control:\nsuccess", "control_off_target_rate":
               "untrained control:\noff target"}
#: the control's columns beside each steered latent's edit (its matched latent under the same edit)
CONTROL = {"success_rate": "control_success_rate", "off_target_rate": "control_off_target_rate"}
#: correlations.csv's predictors: legend name and colour
PREDICTORS = {"cmi": ("CMI of the word (i^o)", SCORE_COLOURS["cmi"]), "heat": ("the latent's heat map", "#17becf"),
              "control_cmi": ("CMI, untrained control's edit", "#7f7f7f")}


def steer_sae(path) -> dict:
    """{model, dataset, run, input, timestep, layer} of a file under
    ``steer/<model>/<data set>/<run>/<input>/t<timestep>/<layer>/``."""
    parts = Path(path).parts
    if len(parts) < 8 or parts[-8] != "steer" or not re.fullmatch(r"t\d+", parts[-3]):
        raise ReportError(f"{path} is not a steered SAE's file (steer/<model>/<data set>/<run>/<input>/t<timestep>/"
                          "<layer>/<file>)")
    model, dataset, run, inp, t, layer = parts[-7:-1]
    return {"model": model, "dataset": dataset, "run": run, "input": inp, "timestep": int(t[1:]), "layer": layer}


def read_saes(paths, needed_by: str = "a steering item") -> list[dict]:
    """Per steered SAE among the folders of ``paths`` (in order): its keys (``sae``), folder, and its chosen, effects
    and correlations tables (images.npz is read where it is drawn)."""
    out = []
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        out.append({"sae": steer_sae(folder / "effects.csv"), "folder": folder,
                    **{name: read_csv(folder / f"{name}.csv", needed_by)
                       for name in ("chosen", "effects", "correlations", "control_effects",
                                    "control_correlations")}})
    if not out:
        raise ReportError(f"{needed_by}: no steered SAE (steer.targets is empty)")
    return out


def with_sae(table: pd.DataFrame, sae: dict) -> pd.DataFrame:
    """``table`` with the SAE's key columns in front."""
    return table.assign(**sae)[[*SAE_KEYS, *[c for c in table.columns if c not in SAE_KEYS]]]


def sae_label(sae: dict) -> str:
    return (f"{sae['model']} · {sae['dataset']} · {sae['layer']} t={sae['timestep']} · SAE {sae['run']} "
            f"({sae['input']})")


def _percent(v) -> str:
    return f"{100 * v:.0f}%"


def effect_note(r: dict) -> str:
    """An edit's numbers in a few words: success and off-target rate where read (shapes world), else mean change."""
    if pd.notna(r.get("success_rate", np.nan)):
        return f"success {_percent(r['success_rate'])} · off {_percent(r['off_target_rate'])}"
    if pd.notna(r.get("off_target_rate", np.nan)):
        return f"no eligible image · off {_percent(r['off_target_rate'])}"
    return f"change {r['mean_change']:.3g}"


# ---- the grid: latents x edits --------------------------------------------------------------------------------------
def grid_cells(images: dict[str, np.ndarray], chosen: pd.DataFrame) -> tuple[str, list[tuple[int, str, list[str]]]]:
    """(the first source of images.npz, [(latent, word, its edit labels in the order they ran)]) for the chosen
    latents that have images."""
    sources = [k.removesuffix("/unedited") for k in images if k.endswith("/unedited")]
    if not sources:
        raise ReportError(f"images.npz holds no '<source>/unedited' images (keys: {list(images)[:5]})")
    source, rows = sources[0], []
    for j, word in zip(chosen["latent"].astype(int), chosen["word"].astype(str)):
        prefix = f"{source}/{j}/"
        edits = [k[len(prefix):] for k in images if k.startswith(prefix)]
        if edits:
            rows.append((j, word, edits))
    return source, rows


def _thumb(image: np.ndarray, side: int = CELL_PX) -> np.ndarray:
    """An RGB uint8 image, shrunk (never enlarged) to at most ``side`` pixels a side."""
    from PIL import Image

    if max(image.shape[:2]) <= side:
        return image
    im = Image.fromarray(image)
    im.thumbnail((side, side))
    return np.asarray(im)


def grid_table(saes: list[dict], needed_by: str = "the steering grid",
               per_cell: int = PER_CELL) -> tuple[pd.DataFrame, list[dict]]:
    """(the effects rows the grid shows: per SAE its first source's rows of the latents with images, in grid order,
    with ``shown`` images each; per SAE what the grid draws: keys, source, rows of (latent, word, [(label, images,
    note)]) and the unedited images)."""
    tables, panels = [], []
    for s in saes:
        images = read_npz(s["folder"] / "images.npz", needed_by)
        source, rows = grid_cells(images, s["chosen"])
        effects = s["effects"][s["effects"]["source"] == source].set_index(["latent", "edit"])
        unedited = images[f"{source}/unedited"][:per_cell]
        drawn = []
        for j, word, edits in rows:
            cells = []
            for label in edits:
                shown = images[f"{source}/{j}/{label}"][:per_cell]
                r = effects.loc[(j, label)].to_dict() if (j, label) in effects.index else {}
                cells.append((label, shown, effect_note(r) if r else ""))
                tables.append({**s["sae"], "source": source, "latent": j, "edit": label, **r, "shown": len(shown)})
            drawn.append((j, word, cells))
        panels.append({"sae": s["sae"], "source": source, "rows": drawn, "unedited": unedited})
    table = pd.DataFrame(tables)
    first = [*SAE_KEYS, "source", "latent", "word", "edit"]
    return table[[c for c in first if c in table] + [c for c in table if c not in first]], panels


def plot_grid(panels: list[dict], png, pdf, title: str, per_cell: int = PER_CELL) -> None:
    """One mosaic per steered SAE: a row per latent (its id and word on the left), the unedited images then each
    edit's, ``per_cell`` images a cell, each cell captioned with its edit and its success / off-target rates (or
    mean change); thin lines part the cells."""
    from ..sae.analysis import tile_images  # the SAE grids' mosaic (imports torch: only here)

    apply_style()
    mosaics = []
    for p in panels:
        rows = [[_thumb(im) for cell in [p["unedited"], *[c[1] for c in cells]] for im in cell[:per_cell]]
                for _, _, cells in p["rows"]]
        width = max(len(r) for r in rows)
        mosaics.append((p, *tile_images(rows, width, caption=0.55), width))
    heights = [0.55 + 1.1 * len(p["rows"]) for p, *_ in mosaics]
    widest = max(m[-1] for m in mosaics)
    fig, axes = plt.subplots(len(mosaics), 1, figsize=(0.95 * widest + 2.6, sum(heights) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (p, mosaic, size, gap, pitch, width) in zip(axes[:, 0], mosaics):
        ax.imshow(mosaic, interpolation="nearest")
        step = per_cell * (size + gap)
        for r, (j, word, cells) in enumerate(p["rows"]):
            y = gap + r * pitch
            ax.text(-gap, y + size / 2, f"#{j}\n{word}", ha="right", va="center", fontsize=7)
            for c, (label, note) in enumerate([("unedited", ""), *[(c[0], c[2]) for c in cells]]):
                ax.text(gap + c * step + step / 2 - gap / 2, y + size + gap / 2, f"{label}\n{note}".strip(),
                        ha="center", va="top", fontsize=5.5)
        for c in range(1, width // per_cell):
            ax.axvline(c * step + gap / 2, color="0.45", lw=0.8)
        ax.set_xlim(-size * 1.6, mosaic.shape[1])
        ax.set_ylim(mosaic.shape[0], 0)
        ax.axis("off")
        ax.set_title(f"{sae_label(p['sae'])} · {p['source']} images", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, png, pdf)


# ---- specificity: per latent x edit ---------------------------------------------------------------------------------
def specificity_table(saes: list[dict]) -> pd.DataFrame:
    """Every SAE's effects rows with its keys, the shapes world's columns present (empty elsewhere)."""
    table = pd.concat([with_sae(with_control(s["effects"], s["control_effects"]), s["sae"]) for s in saes],
                      ignore_index=True)
    for c in ("n_images", "n_eligible", *SPECIFICITY):
        if c not in table:
            table[c] = np.nan
    return table


def with_control(effects: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """``effects`` with the untrained control's success and off-target rates (``CONTROL``) of the same word, source and
    edit (empty where the control was not steered or nothing was read back)."""
    got = [c for c in CONTROL if c in control.columns]
    if control.empty or not got:
        return effects
    ctl = control[["source", "word", "edit", *got]].rename(columns={c: CONTROL[c] for c in got})
    return effects.merge(ctl, on=["source", "word", "edit"], how="left")


def _row_labels(table: pd.DataFrame) -> list[str]:
    """"#<latent> <word> · <edit>" per row, after the SAE keys that differ between the rows' SAEs and the source
    where there are several (so that every row's label is its own)."""
    varying = [k for k in (*SAE_KEYS, "source") if table[k].nunique() > 1]
    return [" ".join(f"{'t' if k == 'timestep' else ''}{r[k]}" for k in varying) + (" · " if varying else "") +
            f"#{r['latent']} {r['word']} · {r['edit']}" for r in table.to_dict("records")]


def plot_specificity(table: pd.DataFrame, png, pdf, title: str) -> None:
    """A table as a heat map: a row per (SAE, latent, edit), a column per number of ``SPECIFICITY`` that was read
    (on another world than the shapes world: the mean change alone); each cell shows its value; the colour is the
    rate (0-1), or for presence and mean change the share of the column's largest (presence before and after on one
    scale)."""
    apply_style()
    cols = [c for c in SPECIFICITY if table[c].notna().any()]
    labels = _row_labels(table)
    scale = {c: 1.0 for c in RATES}
    top = table[list(PRESENCE)].abs().max().max()
    scale.update({c: float(top) if top and top > 0 else 1.0 for c in PRESENCE})
    top = table["mean_change"].abs().max()
    scale["mean_change"] = float(top) if top and top > 0 else 1.0
    long = pd.DataFrame([{"row": label, "metric": c, "shade": v / scale[c],
                          "text": "-" if pd.isna(v) else f"{v:.2f}" if c in RATES else f"{v:.3g}"}
                         for label, (_, r) in zip(labels, table.iterrows()) for c in cols for v in [r[c]]])
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 4.5, 0.3 * len(labels) + 1.6))
    heat_map(ax, long, "row", "metric", "shade", "text", rows=labels, cols=cols, cmap="viridis",
             annot_kws={"fontsize": 6}, xticklabels=[SPECIFICITY[c] for c in cols],
             cbar_kws={"label": "rate; presence and mean change: share of the column's largest"})
    ax.set(xlabel="", ylabel="")
    ax.tick_params(axis="y", rotation=0, labelsize=6)
    ax.tick_params(axis="x", rotation=0, labelsize=6)
    saes = table[list(SAE_KEYS)].drop_duplicates()
    ax.set_title(title + (f"\n{sae_label(saes.iloc[0].to_dict())}" if len(saes) == 1 else ""))
    save_figure(fig, png, pdf)


# ---- causal: the change against CMI and the heat map ----------------------------------------------------------------
def causal_table(saes: list[dict]) -> pd.DataFrame:
    """Every SAE's correlations rows with its keys, and the untrained control's CMI rows as predictor
    ``control_cmi`` on the row of the steered latent they match (its edit and word, the control's own latent)."""
    parts = []
    for s in saes:
        ctl = s["control_correlations"]
        ctl = ctl[ctl["predictor"] == "cmi"] if "predictor" in ctl.columns else ctl.iloc[0:0]
        ctl = ctl.assign(control_latent=ctl["latent"], latent=ctl["matches"], predictor="control_cmi") \
            .drop(columns="matches")
        parts += [with_sae(s["correlations"], s["sae"])] + ([with_sae(ctl, s["sae"])] if len(ctl) else [])
    return pd.concat(parts, ignore_index=True)


def plot_causal(table: pd.DataFrame, png, pdf, title: str) -> None:
    """Per (SAE, source) a row of panels, image and pixel level: each (latent, edit)'s Pearson r of the change with
    each predictor (a dot, its 95% bootstrap interval as a bar); an undefined r (fewer than two images with the
    predictor) is left out."""
    apply_style()
    if table.empty:
        note_figure(png, pdf, title, "no correlation rows")
        return
    facets = list(table.groupby([*SAE_KEYS, "source"], sort=False))
    levels = [lv for lv in ("image", "pixel") if lv in set(table["level"])]
    tall = max(g[["latent", "edit"]].drop_duplicates().shape[0] for _, g in facets)
    fig, axes = plt.subplots(len(facets), len(levels), figsize=(5.2 * len(levels), (0.32 * tall + 1.3) * len(facets)),
                             squeeze=False)
    for row, (key, g) in enumerate(facets):
        ys = list(dict.fromkeys(f"#{r.latent} {r.word} · {r.edit}" for r in g.itertuples()))
        preds = [p for p in PREDICTORS if p in set(g["predictor"])]
        for ax, level in zip(axes[row], levels):
            drawn = 0
            for k, pred in enumerate(preds):
                s = g[(g["level"] == level) & (g["predictor"] == pred)].dropna(subset=["pearson"])
                if s.empty:
                    continue
                y = np.array([ys.index(f"#{r.latent} {r.word} · {r.edit}") for r in s.itertuples()], float)
                err = np.vstack([s["pearson"] - s["ci_low"], s["ci_high"] - s["pearson"]]).clip(min=0)
                ax.errorbar(s["pearson"], y + (k - (len(preds) - 1) / 2) * 0.3, xerr=np.nan_to_num(err), fmt="o",
                            ms=3.5, capsize=2, color=PREDICTORS[pred][1], label=PREDICTORS[pred][0])
                drawn += len(s)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_yticks(range(len(ys)), ys, fontsize=6)
            ax.set_ylim(len(ys) - 0.5, -0.5)
            ax.set_xlabel(f"Pearson r with the change, {level} level (95% CI)")
            ax.set_title(f"{sae_label(dict(zip(SAE_KEYS, key)))} · {key[-1]}", fontsize=7)
            if drawn:
                ax.legend(fontsize=6)
            else:
                ax.text(0, len(ys) / 2 - 0.5, "no defined correlation", ha="center", va="center", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png, pdf)


# ---- the summary page's numbers ---------------------------------------------------------------------------------
def best_edits(effects: pd.DataFrame, correlations: pd.DataFrame) -> pd.DataFrame:
    """Per steered latent, its edit of highest success rate over every source (``measure`` success_rate; the first
    in run order on a tie), or where no success was read for it (a word the shapes world cannot read back, or
    another world) its edit of largest mean change (``measure`` mean_change); with that edit's row of effects.csv
    and its change's Pearson r with the word's CMI at pixel level (``cmi_n``, ``cmi_pearson``, ``cmi_ci_low``,
    ``cmi_ci_high``; empty where none was computed)."""
    success = effects["success_rate"] if "success_rate" in effects else pd.Series(np.nan, effects.index)
    read = success.notna().groupby(effects["latent"]).transform("any")
    table = effects.assign(measure=np.where(read, "success_rate", "mean_change"),
                           _score=np.where(read, success, effects["mean_change"]))
    best = table.loc[argmax_rows(table, ["latent"], "_score")].sort_index().drop(columns="_score")
    cmi = correlations[(correlations["predictor"] == "cmi") & (correlations["level"] == "pixel")]
    cmi = cmi[["source", "latent", "edit", "n", "pearson", "ci_low", "ci_high"]].rename(
        columns={c: f"cmi_{c}" for c in ("n", "pearson", "ci_low", "ci_high")})
    return best.merge(cmi, on=["source", "latent", "edit"], how="left")
