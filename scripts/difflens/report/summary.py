"""The summary page: this run's headline numbers next to the papers', each marked with the model and data set it came
from. The papers' numbers are Stable Diffusion's on real data sets; a shapes-world number beside one is marked as
such, since the two are not expected to agree."""
from __future__ import annotations

import functools
import html
from pathlib import Path

import numpy as np
import pandas as pd

from .inputs import info_folder, read_csv, read_json
from .paper import TABLE4_PROTOCOL, compare, load_numbers, summary_number
from .revelio import argmax_rows, best_by_validation

def _row(section, quantity, value, model, dataset, key, kinds, identity=None, paper=None, steps=None):
    """One headline row; the paper's number for ``key`` (``docs/paper_numbers.csv``'s ``summary_key``, parts
    joined by "/") only where the model's weights are the paper's and the step count ``steps`` (where the number
    depends on one) is the paper's (``paper.summary_number``), else what differs; ``paper``: a (value, source) pair
    computed by the caller instead."""
    source = ((identity or {}).get("models", {}).get(model) or {}).get("source", "")
    data = ((identity or {}).get("datasets", {}).get(dataset) or {}).get("source")
    if paper is None:
        paper = summary_number(numbers(), "/".join(key), source, steps, data) if key else ("-", "")
    world = "shapes world (not Stable Diffusion)" if kinds.get(model) == "shapes" else kinds.get(model, "")
    return {"section": section, "quantity": quantity, "this run": value, "model": model, "dataset": dataset,
            "model kind": world, "paper": paper[0], "paper source": paper[1]}


@functools.cache
def numbers() -> pd.DataFrame:
    """The papers' numbers (``docs/paper_numbers.csv``), read once."""
    return load_numbers()


#: the paper items whose numbers stand beside a summary row of Diff-C accuracy and of SAE sigma_label
DIFFC_ITEMS, SAE_ITEMS = ("fig4", "fig6", "fig8", "table3", "table5"), ("table2a", "table2b", "table2c", "table2d")


def revelio_paper(b: dict, identity: dict | None, items, metric: str, ours: str) -> tuple[str, str]:
    """Revelio's ``metric`` for the same model, data set, protocol, layer and timestep as the row ``b`` (``items``
    of ``docs/paper_numbers.csv``), or ("-", what differs)."""
    ident = identity or {"models": {}, "datasets": {}, "sigma": b.get("sigma_definition", "sparse"), "split": ""}
    c = compare(pd.DataFrame([b]), numbers(), ident, "revelio", items, metric, ours).iloc[0]
    if c["paper_differs"]:
        return "-", f"Revelio: differs: {c['paper_differs']}"
    return f"{metric} {c['paper_value']:g}", f"Revelio {c['paper_source']} ({c['paper_verified']})"


def _where(row) -> str:
    """"(layer, t=timestep)", or "(layer)" for an external baseline's image features (no timestep)."""
    t = row["timestep"]
    return f"({row['layer']})" if pd.isna(t) else f"({row['layer']}, t={int(t)})"


def null_verdict(b: dict) -> str:
    """One SAE's purity against the null of the mean of random sets, and its share of latents above the single-set
    95th percentile against chance ("" for a summary written before the null existed)."""
    if "null_purity_p_value" not in b or pd.isna(b["null_purity_p_value"]):
        return ""
    return (f"; null of the mean: 95th pct {b['null_purity_mean_p95']:.2f}, p = {b['null_purity_p_value']:.3g}; "
            f"{100 * b['null_purity_beyond_share']:.0f}% of latents above the single-set 95th pct (chance "
            f"{100 * b['null_purity_beyond_chance']:.1f}%)")


def beats_null(sae: pd.DataFrame, model: str, ds: str) -> str:
    """How many of a (model, data set)'s SAEs beat the null of the mean, and their untrained controls."""
    g = sae[(sae["model"] == model) & (sae["dataset"] == ds)]
    if "better_than_random" not in g:
        return "not computed"
    untrained = g["untrained_null_purity_p_value"] < 0.05 if "untrained_null_purity_p_value" in g else None
    return (f"{int(g['better_than_random'].astype(bool).sum())} of {len(g)}" +
            (f" (untrained controls: {int(untrained.sum())} of {len(g)})" if untrained is not None else ""))


def control_verdict(sae: pd.DataFrame) -> str:
    """How a (model, data set)'s trained SAEs compare with their untrained controls (same size and init, no
    training; ``sae/controls.py``): at how many SAEs the trained one is purer, and at how many (SAE, attribute value)
    pairs its best latent's AUROC is higher, with the mean differences. Where the trained SAE wins at half or fewer,
    the sentence says that these features cannot show the SAE learned anything by that measure."""
    purer = sae["purity"] - sae["untrained_purity"]
    columns = [c for c in sae.columns if c.startswith("auroc:")]
    auroc = (sae[columns].to_numpy(float) - sae[[f"untrained_{c}" for c in columns]].to_numpy(float)).ravel()
    auroc = auroc[np.isfinite(auroc)]
    parts, weak = [], []
    for what, diff in (("purity", purer.dropna().to_numpy()), ("best-latent AUROC per attribute value", auroc)):
        wins = int((diff > 0).sum())
        parts.append(f"{what} higher at {wins} of {len(diff)} (mean difference {diff.mean():+.3f})" if len(diff)
                     else f"{what}: nothing to compare")
        if len(diff) and wins <= len(diff) / 2:
            weak.append(what)
    verdict = "; ".join(parts)
    if weak:
        verdict += (f". The untrained SAE does as well by {' and '.join(weak)}: by that measure these features cannot "
                    "show that the SAE learned anything")
    return verdict


#: localization.csv's methods in the summary's order, with the words for each
LOCALIZATION_METHODS = {"whole_image": "whole image", "mi": "MI", "cmi": "CMI", "attention_itd": "attention on the "
                        "estimator's draws (the paper's attention + information)", "attention_ddim": "attention by "
                        "DDIM inversion (the paper's attention)", "attention+cmi": "mean of attention and CMI"}


def localization_rows(sel: pd.Series, model: str, ds: str, kinds: dict, identity: dict | None) -> list[dict]:
    """The summary's rows of one localization.csv line (all words), from Table 3's long form
    (``information.localization_table``): per method (and smaller draw count of a list), the mIoU at the held-out
    threshold (no paper number: the paper picks its threshold on the test set) and at the paper's oracle threshold,
    set beside the paper's number of the same method and step count (draws; DDIM steps for the attention
    baseline)."""
    from .information import ORACLE, localization_table

    out = []
    for r in localization_table(pd.DataFrame([sel]).assign(model=model, dataset=ds)).itertuples():
        col = f"{r.method}@{r.draws}" if r.draws else r.method
        name = LOCALIZATION_METHODS[r.method] + (f", {r.draws} draws" if r.draws else "")
        if r.threshold != ORACLE:
            threshold = ", held-out threshold" if r.method != "whole_image" else ""
            out.append(_row("Information: localization", f"mIoU % ({name}, all words{threshold})",
                            f"{100 * r.miou:.1f}", model, ds, ("localization", col), kinds, identity))
            continue
        steps = None if r.steps is None or pd.isna(r.steps) or r.steps == "" else int(r.steps)
        out.append(_row("Information: localization", f"mIoU % ({name}, all words, best threshold of the paper's "
                        f"grid on the test rows{f', {steps} steps' if steps else ''})", f"{100 * r.miou:.1f}", model,
                        ds, ("localization", f"{r.method}:oracle"), kinds, identity, steps=steps))
    return out


def intervention_quantity(predictor: str, level: str) -> str:
    """The summary's words for an intervention.csv row of the omit edits: a map's or a mask baseline's Pearson r,
    or (predictor ``<map>-<baseline>``) the paired difference of the two correlations."""
    if "-" in predictor:
        pred, base = predictor.split("-", 1)
        return f"r({pred}) - r({base}), {level} level (word omitted; paired bootstrap, above 0: {pred} is better)"
    kind = " baseline" if predictor.endswith("_mask") else ""
    return f"Pearson r, {level} level, {predictor}{kind} (word omitted)"


def headline_rows(tables: dict[str, list], kinds: dict[str, str], identity: dict | None = None) -> pd.DataFrame:
    """The headline rows from the input tables (kind -> paths, as the rule ``summary_page`` passes them);
    ``kinds``: model name -> kind (shapes | sd | dit); ``identity``: ``paper.identities`` of the config (which
    models, data sets and protocols are the papers')."""
    rows = []
    for path in tables.get("check", []):
        c = read_json(path, "the summary page")
        model = Path(path).parent.name
        rows.append(_row("model check", f"held-out loss on {c['n_test_images']} images, conditional / "
                         "unconditional", f"{c['loss_conditional']:.4f} / {c['loss_unconditional']:.4f}", model,
                         c["dataset"], (), kinds))
    for path in tables.get("skipped", []):  # latents/<model>/<data set>/skipped.csv: images extraction could not read
        skipped = read_csv(path, "the summary page")
        model, ds = Path(path).parts[-3:-1]
        named = "; ".join(f"{r.sample_id} ({r.reason})" for r in skipped.head(3).itertuples())
        rows.append(_row("data", "images left out because they cannot be read (extraction; every later stage)",
                         f"{len(skipped)}: {named}{'; ...' if len(skipped) > 3 else ''}" if len(skipped) else "none",
                         model, ds, (), kinds))
    for path in tables.get("accuracy", []):
        best = best_by_validation(read_csv(path, "the summary page"))
        for b in best[best["classifier"] == "diffc"].to_dict("records"):
            rows.append(_row("Revelio: Diff-C", f"best test accuracy ({b['target']}), layer and timestep chosen on "
                             "val", f"{b['test_accuracy']:.3f} {_where(b)}", b["model"], b["dataset"], (), kinds,
                             paper=revelio_paper(b, identity, DIFFC_ITEMS, "accuracy", "test_accuracy")))
        for b in best[(best["classifier"] == "linear_probe") & (best["target"] == "label")].to_dict("records"):
            rows.append(_row("Revelio: linear probe", "best test accuracy (label), chosen on val",
                             f"{b['test_accuracy']:.3f} {_where(b)}", b["model"], b["dataset"], (), kinds))
    for path in tables.get("sae", []):
        sae = read_csv(path, "the summary page")
        for b in sae.loc[argmax_rows(sae, ["model", "dataset"], "purity")].to_dict("records"):
            model, ds = b["model"], b["dataset"]
            rows.append(_row("Revelio: k-SAE", "purest SAE: purity / sigma_label (its untrained SAE; random "
                             "directions; random images)",
                             f"{b['purity']:.2f} / {b['sigma_label']:.2f} ({b['untrained_purity']:.2f} / "
                             f"{b['untrained_sigma_label']:.2f}; {b['random_directions_purity']:.2f} / "
                             f"{b['random_directions_sigma_label']:.2f}; {b['random_purity_mean']:.2f} / "
                             f"{b['random_sigma_mean']:.2f}) at {b['layer']}, t={int(b['timestep'])}"
                             f"{null_verdict(b)}", model, ds, (), kinds,
                             paper=revelio_paper(b, identity, SAE_ITEMS, "sigma_label", "sigma_label")))
            rows.append(_row("Revelio: k-SAE", "SAEs whose mean purity beats the null of as many random 10-image "
                             "sets as eligible latents (p < 0.05; sigma_label: " +
                             str(b.get("sigma_definition", "sparse")) + ")", beats_null(sae, model, ds), model, ds,
                             (), kinds))
        for (model, ds), g in sae.groupby(["model", "dataset"], sort=False):
            rows.append(_row("Revelio: k-SAE", "trained SAEs against their untrained controls", control_verdict(g),
                             model, ds, (), kinds))
    for path in tables.get("aro", []):
        model, ds = info_folder(path)
        aro = read_csv(path, "the summary page")
        main = aro[aro["metric"] == "accuracy"]
        for r in main.to_dict("records"):
            macro = aro[(aro["metric"] == "macro") & (aro["kind"] == r["kind"]) & (aro["score"] == r["score"])]
            value = f"{100 * r['accuracy']:.1f}" + (f" (macro {100 * macro['accuracy'].iloc[0]:.1f})"
                                                     if len(macro) else "") + f", n={int(r['n'])}"
            rows.append(_row("Information: ARO", f"{r['kind']} accuracy % ({r['score']})", value, model, ds,
                             ("aro", r["kind"], r["score"]), kinds, identity))
    for path in tables.get("localization", []):
        model, ds = info_folder(path)
        loc = read_csv(path, "the summary page")
        if "whole_image" not in loc:  # localize_words found no masks: maps only (COCO-WL)
            rows.append(_row("Information: localization", "mIoU %", "none: the data set has no masks (maps only)",
                             model, ds, (), kinds))
            continue
        sel = (loc[loc["word_type"] == "all"] if (loc["word_type"] == "all").any() else loc.head(1)).iloc[0]
        rows += localization_rows(sel, model, ds, kinds, identity)
    for path in tables.get("intervention", []):
        model, ds = info_folder(path)
        t = read_csv(path, "the summary page")
        for r in t[t["edit"] == "omit"].to_dict("records"):
            row = _row("Information: intervention", intervention_quantity(r["predictor"], r["level"]),
                       f"{r['pearson']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]", model, ds,
                       ("intervention", r["level"], r["predictor"]), kinds, identity,
                       steps=r.get("steps") if pd.notna(r.get("steps")) else None)
            off = [f"{c} {r[c]} (the paper's: {v})" for c, v in TABLE4_PROTOCOL.items() if c in r and str(r[c]) != v]
            if row["paper"] != "-" and off:  # the paper's number, but edits made another way
                row.update({"paper": "-", "paper source": "differs: " + off[0]})
            rows.append(row)
        if not t["predictor"].str.contains("-", regex=False).any():
            rows.append(_row("Information: intervention", "mask baselines (the word's object, all objects)",
                             "none: the data set has no object masks for every edited word", model, ds, (), kinds))
    for path in tables.get("word_maps", []):
        model, ds = info_folder(path)
        totals = read_csv(path, "the summary page")
        rows.append(_row("Information: word maps", "words with the highest mean i^s CMI, nats (rows, images, rows "
                         "whose word the image contradicts)", word_maps_line(totals), model, ds, (), kinds))
    for folder in dict.fromkeys(Path(p).parent for p in tables.get("steer", [])):
        rows += steering_rows(folder, kinds)
    return pd.DataFrame(rows, columns=["section", "quantity", "this run", "model", "dataset", "model kind", "paper",
                                       "paper source"])


def steering_rows(folder: Path, kinds: dict) -> list[dict]:
    """One row per steered latent of a steered SAE's folder (effects.csv, correlations.csv): its edit of highest
    success rate (``steering.best_edits``; without the shapes world's read-back, of largest mean change) with its
    off-target rate, and the Pearson r of that edit's change with the word's CMI at pixel level."""
    from .steering import best_edits, steer_sae

    sae = steer_sae(folder / "effects.csv")
    from .steering import with_control

    best = best_edits(with_control(read_csv(folder / "effects.csv", "the summary page"),
                                   read_csv(folder / "control_effects.csv", "the summary page")),
                      read_csv(folder / "correlations.csv", "the summary page"))
    where = f"{sae['layer']}, t={sae['timestep']}, SAE {sae['run']} ({sae['input']})"
    several = best["source"].nunique() > 1
    out = []
    for r in best.to_dict("records"):
        edit = r["edit"] + (f" ({r['source']} images)" if several else "")
        if r["measure"] == "success_rate":
            effect = (f"success {r['success_rate']:.2f} of {int(r['n_eligible'])} eligible, off-target "
                      f"{r['off_target_rate']:.2f} of {int(r['n_images'])}")
            if pd.notna(r.get("control_success_rate")):
                effect += f" (the untrained control's matched latent: success {r['control_success_rate']:.2f})"
        else:
            effect = f"mean change {r['mean_change']:.3g}"
        cmi = ("not computed" if pd.isna(r["cmi_pearson"]) else
               f"{r['cmi_pearson']:.2f} [{r['cmi_ci_low']:.2f}, {r['cmi_ci_high']:.2f}], n={int(r['cmi_n'])}")
        best_by = "success rate" if r["measure"] == "success_rate" else "mean change (no success read)"
        out.append(_row("Steering", f"latent #{r['latent']} '{r['word']}' ({where}): its best edit by {best_by}, "
                        "and the Pearson r of that edit's change with the word's CMI (pixel level)",
                        f"{edit}: {effect}; r(CMI) {cmi}", sae["model"], sae["dataset"], (), kinds))
    return out


def word_maps_line(totals: pd.DataFrame, top: int = 3) -> str:
    """The summary's words for word_maps.csv: the ``top`` words by mean i^s CMI over their rows (the words the
    images support most; i^o grows with any change of the prediction, right or wrong), the table's size and how
    many rows have negative i^s (the image contradicts the word)."""
    by_word = totals.groupby("word")["cmi_s_nats"].mean().sort_values(ascending=False).head(top)
    best = ", ".join(f"{w} {v:.2f}" for w, v in by_word.items())
    return (f"{best} ({len(totals)} rows on {totals['sample_id'].nunique()} images; "
            f"{int((totals['cmi_s_nats'] < 0).sum())} with negative i^s)")


INTRO = ("Headline numbers of this run beside the papers'. The papers measured Stable Diffusion (and DiT) on real "
         "data sets; a number from the shapes world (a 32 px synthetic data set and a 1.7M-parameter model shipped "
         "with difflens) stands beside them for orientation only and is not expected to match. Each row names the "
         "model and data set it came from. The figures in figures/ and the tables behind them give the full "
         "picture.")


def write_markdown(rows: pd.DataFrame, path, title: str = "difflens run summary") -> None:
    cols = list(rows.columns)
    lines = [f"# {title}", "", INTRO, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in r) + " |" for r in rows.itertuples(index=False)]
    Path(path).write_text("\n".join(lines) + "\n")


def write_html(rows: pd.DataFrame, path, title: str = "difflens run summary", browser: bool = True) -> None:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in rows.itertuples(index=False))
    Path(path).write_text(
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f6}"
        f"</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(INTRO)}</p><table><tr>{head}</tr>"
        f"{body}</table>" + ("<p><a href='browser/index.html'>feature browser</a></p>" if browser else "")
        + "</body></html>\n")
