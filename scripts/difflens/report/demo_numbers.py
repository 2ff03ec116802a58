"""The README's demo numbers: every shapes-world number the README quotes, read from the outputs of ``make demo``
(config.yaml) and written as Markdown between two markers in README.md, so that the README says what the last run
measured rather than what an earlier one did. ``scripts/readme_numbers.py`` (``make readme-numbers``) runs it.

Read from the run's ``results`` folder: ``provenance.json`` (the run's start, versions, commit, config),
``models/<model>/check.json``, ``classify/<model>/<data set>/accuracy.csv``, ``sae/<model>/<data set>/summary.csv``,
``info/<model>/<data set>/aro.csv``, ``localization.csv`` and ``intervention.csv``, the ``benchmarks/`` files and the
size of ``activations/<model>/<data set>/``. A missing file stops it with a message naming the file (and the rule
that makes it)."""
from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path

import pandas as pd

from ..data.shapes import COLOURS
from .inputs import read_csv, read_json, require
from .revelio import best_by_validation

BEGIN = "<!-- demo-numbers:begin -->"
END = "<!-- demo-numbers:end -->"
WIDTH = 120
#: the ARO kinds of the shapes world, as the README names them
ARO_KINDS = {"relation": "relation swap", "attribute": "colour swap", "order": "word order"}
ARO_SCORES = {"i_s": "i^s", "err": "denoising error", "i_o": "i^o"}
#: localization.csv's methods, as the README names them
METHODS = {"whole_image": "whole image", "mi": "MI", "cmi": "CMI", "attention_itd": "attention on the draws",
           "attention_ddim": "attention by DDIM inversion", "attention+cmi": "attention + CMI"}


class BlockError(ValueError):
    """README.md does not hold the markers once each, in order."""


def span(values, digits: int = 2) -> str:
    """``lo-hi`` of ``values`` at ``digits`` decimals, or the one value when both round alike."""
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}-{hi}"


def interval(row) -> str:
    return f"{row['pearson']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def bullet(text: str) -> str:
    """One Markdown list item, wrapped at ``WIDTH`` columns."""
    return textwrap.fill(" ".join(text.split()), WIDTH, initial_indent="- ", subsequent_indent="  ",
                         break_long_words=False, break_on_hyphens=False)


# ---- the run -------------------------------------------------------------------------------------------------------
def job_seconds(benchmarks: Path) -> pd.DataFrame:
    """One row per job's benchmark file: the rule (its folder under ``benchmarks``, or the file's name for a rule
    without wildcards), the file's seconds and its time of writing (the job's end)."""
    files = sorted(require(benchmarks, "the README's demo block").rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"the README's demo block needs the run's benchmark files: none under {benchmarks}")
    return pd.DataFrame([{"rule": f.relative_to(benchmarks).with_suffix("").parts[0],
                          "s": float(pd.read_csv(f, sep="\t")["s"].mean()), "end": f.stat().st_mtime}
                         for f in files])


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in require(folder, "the README's demo block").rglob("*") if p.is_file())


def run_lines(results: Path, model: str, dataset: str, prov: dict) -> list[str]:
    jobs = job_seconds(results / "benchmarks")
    rules = jobs.groupby("rule")["s"].agg(["size", "sum"]).sort_values("sum", ascending=False)
    costly = ", ".join(f"`{r}` {v['sum']:,.0f} s in {v['size']:.0f} job{'s' if v['size'] > 1 else ''}"
                       for r, v in rules.head(4).iterrows())
    started = datetime.fromisoformat(prov["started"]).timestamp()
    wall = jobs["end"].max() - started
    wall_text = (f"pipeline wall time {duration(wall)} (from the start in `provenance.json` to the last job's "
                 "benchmark file; `make demo` then adds the Snakemake report)" if wall > 0 else
                 "no wall time (the benchmark files predate the start in `provenance.json`: a later run rewrote it)")
    ex = prov["config"]["extraction"]
    m = prov["config"]["models"][model]
    size = folder_bytes(results / "activations" / model / dataset)
    stored = "pooled vectors and float16 maps" if ex.get("save_maps") else "pooled vectors"
    return [bullet(f"**Run**: {len(jobs)} jobs with a benchmark file, {jobs['s'].sum():,.0f} job seconds in all "
                   f"(most: {costly}); {wall_text}."),
            bullet(f"**Activations on disk**: {size / 1e9:.2f} GB ({stored} of {len(m['layers'])} layers x "
                   f"{len(m['timesteps'])} timesteps, `activations/{model}/{dataset}/`).")]


def check_line(check: dict, model: str) -> str:
    s = check["samples"]
    return bullet(f"**Model check** (`models/{model}/check.json`): held-out loss {check['loss_conditional']:.5f} with "
                  f"the caption vs {check['loss_unconditional']:.5f} with the empty prompt on the first "
                  f"{check['n_test_images']} test images; {round(s['follow_caption'] * s['n'])} of {s['n']} DDIM "
                  "samples show their caption's colours in the named relation.")


# ---- Revelio: classifiers and k-SAEs -------------------------------------------------------------------------------
def by_timestep(table: pd.DataFrame, column: str, best: bool = False) -> str:
    """``t = 25: lo-hi, t = 250: ...`` over the layers of each timestep (``best``: and, at the first timestep, the
    layer of the maximum)."""
    parts = []
    for t, g in table.groupby("timestep"):
        top = f" (best {g.loc[g[column].idxmax(), 'layer']})" if best and not parts else ""
        parts.append(f"t = {int(t)}: {span(g[column])}{top}")
    return ", ".join(parts)


def chosen(best: pd.DataFrame, classifier: str, target: str = "label") -> str:
    r = best[(best["classifier"] == classifier) & (best["target"] == target)].iloc[0]
    return f"{r['test_accuracy']:.3f} ({r['layer']}, t = {int(r['timestep'])})"


def classifier_lines(acc: pd.DataFrame) -> list[str]:
    label = acc[acc["target"] == "label"]
    diffc, probes = label[label["classifier"] == "diffc"], acc[acc["classifier"] == "linear_probe"]
    best = best_by_validation(acc)
    steps = sorted(probes["timestep"].unique())
    early = probes[probes["timestep"] == steps[0]]
    present = [f"has_{c}" for c in COLOURS]
    colours = span(early[early["target"].isin(present)]["test_accuracy"])
    two = probes[probes["timestep"].isin(steps[:2]) & probes["target"].isin(present)]
    shape = span(early[early["target"] == "shape"]["test_accuracy"])
    last = probes[probes["timestep"] == steps[-1]].groupby("target").agg(
        best=("test_accuracy", "max"), majority=("majority_accuracy", "first"))
    gap = (last["best"] - last["majority"]).abs().max()
    n_obj = (f" (`n_objects` {last.loc['n_objects', 'best']:.2f}, majority rate "
             f"{last.loc['n_objects', 'majority']:.2f})" if "n_objects" in last.index else "")
    n_classes = int(label["n_classes"].iloc[0])
    probe_label = by_timestep(probes[probes["target"] == "label"], "test_accuracy")
    both = " and ".join(str(int(t)) for t in steps[:2])
    return [
        bullet(f"**Diff-C** (`classify/<model>/<data set>/accuracy.csv`, test split, `label`: {n_classes} classes, "
               f"chance {1 / n_classes:.2f}, majority rate {label['majority_accuracy'].iloc[0]:.2f}): "
               f"{by_timestep(diffc, 'test_accuracy', best=True)}. Layer and timestep chosen on val (Revelio Fig. 4, "
               f"8, Table 5): {chosen(best, 'diffc')}."),
        bullet(f"**Linear probes** on pooled vectors, `label`: {probe_label}; chosen on val "
               f"{chosen(best, 'linear_probe')}. At t = {int(steps[0])} each colour's presence (`has_<colour>`) is "
               f"read at {colours} in every layer (at t = {both}: {span(two['test_accuracy'])}), `shape` only at "
               f"{shape}: the spatial mean washes shape out. At t = {int(steps[-1])} every target's best probe is "
               f"within {gap:.2f} of its majority rate{n_obj}."),
    ]


def null_line(sae: pd.DataFrame) -> str:
    """How many SAEs (and their untrained controls) beat the null of the mean of random sets, and the spread of the
    share of latents above the single-set 95th percentile ("" for summaries written before the null)."""
    if "null_purity_p_value" not in sae:
        return "."
    untrained = int((sae["untrained_null_purity_p_value"] < 0.05).sum()) if "untrained_null_purity_p_value" in sae \
        else "?"
    return (f"; against the null of the mean of as many random sets as eligible latents (95th percentile "
            f"{span(sae['null_purity_mean_p95'])}), purity is better than random (p < 0.05) at "
            f"{int(sae['better_than_random'].astype(bool).sum())} of {len(sae)} SAEs (untrained controls: "
            f"{untrained} of {len(sae)}), and {span(100 * sae['null_purity_beyond_share'], 0)}% of latents are above "
            f"the single-set 95th percentile, where {span(100 * sae['null_purity_beyond_chance'], 1)}% of random sets "
            "are.")


def sae_lines(sae: pd.DataFrame) -> list[str]:
    purity = sae.groupby("timestep").agg(lo=("purity", "min"), hi=("purity", "max"), avg=("purity", "mean"))
    purest = sae.loc[sae.groupby("timestep")["purity"].idxmax(), ["timestep", "layer"]].set_index("timestep")["layer"]
    trained = ", ".join(f"t = {int(t)}: {span([r.lo, r.hi])} (mean {r.avg:.2f}, purest {purest[t]})"
                        for t, r in purity.iterrows())
    controls = "; ".join(f"{name} {by_timestep(sae, f'{col}_purity')}" for col, name in
                         (("untrained", "untrained SAE"), ("random_directions", "random directions")))
    purer = int((sae["purity"] > sae["untrained_purity"]).sum())
    first, last = sae["timestep"].min(), sae["timestep"].max()
    early = sae[sae["timestep"] == first]
    colour = {c: early[f"auroc:has_{c}=1"].max() for c in COLOURS}
    untrained = [early[f"untrained_auroc:has_{c}=1"].max() for c in COLOURS]
    late = sae[sae["timestep"] == last]
    wide = sae.loc[sae["n_latents"].idxmax(), "n_latents"]
    dead = sae.groupby("layer")["train_dead_fraction"].max().sort_values()
    worst, rest = dead.index[-1], dead.iloc[:-1]
    n_worst = int(sae.loc[sae["layer"] == worst, "n_latents"].max())
    return [
        bullet(f"**k-SAEs** (`sae/<model>/<data set>/summary.csv`: {len(sae)} SAEs, up to {wide} latents, read on "
               f"{int(sae['n_images'].iloc[0]):,} {sae['split'].iloc[0]} images; Revelio Table 2): mean top-10 purity "
               f"of the latents {trained}. Their controls: {controls}. Random sets of 10 images: mean "
               f"{sae['random_purity_mean'].iloc[0]:.2f}, 95th percentile of one set "
               f"{sae['random_purity_p95'].iloc[0]:.2f}{null_line(sae)} "
               f"The trained SAE is purer than its untrained control at {purer} of {len(sae)}, so purity cannot "
               "show here that the SAEs learned anything."),
        bullet(f"**Attribute latents**: at t = {int(first)} the best latent reads each colour's presence at AUROC "
               + ", ".join(f"{v:.2f} ({c})" for c, v in colour.items())
               + f", where the untrained SAE's best reaches {span(untrained)}; at t = {int(last)} the best latent "
               f"of every SAE reaches {span(late['best_auroc_max'])} over every attribute value (untrained "
               f"{span(late['untrained_best_auroc_max'])}). Val FVU is at most {sae['val_fvu'].max():.2f}. Dead "
               f"latents on the train split: {worst} up to {dead.iloc[-1]:.1%} of its {n_worst}, every other layer "
               f"at most {rest.max():.1%}."),
    ]


# ---- information decomposition -------------------------------------------------------------------------------------
def aro_lines(aro: pd.DataFrame) -> list[str]:
    acc = aro[aro["metric"] == "accuracy"].set_index(["score", "kind"])["accuracy"]
    kinds = [k for k in ARO_KINDS if k in acc.index.get_level_values("kind")]
    scores = "; ".join(f"{name} " + " / ".join(f"{acc[(s, k)]:.2f}" for k in kinds) for s, name in ARO_SCORES.items())
    rel = aro[(aro["kind"] == "relation") & (aro["metric"] == "group")]
    io = rel[rel["score"] == "i_o"].sort_values("accuracy")
    i_s = rel[rel["score"] == "i_s"]["accuracy"]
    n = int(aro[aro["metric"] == "accuracy"]["n"].iloc[0])
    return [bullet(f"**ARO** (`info/<model>/<data set>/aro.csv`, {n} test images; Kong et al. Table 1), accuracy "
                   f"against the {' / '.join(ARO_KINDS[k] for k in kinds)}: {scores}. Per relation (Table 2): i^o "
                   + ", ".join(f"{r['accuracy']:.2f} ({r['group']})" for _, r in io.iterrows())
                   + f"; i^s {span(i_s)} on every relation.")]


def localization_lines(loc: pd.DataFrame) -> list[str]:
    rows = loc.set_index("word_type")
    order = ["all"] + [w for w in rows.index if w != "all"]
    methods = [m for m in METHODS if m in rows.columns]
    parts = [f"{w} words ({int(rows.loc[w, 'n'])} rows) " + ", ".join(f"{rows.loc[w, m]:.2f}" for m in methods)
             for w in order]
    return [bullet(f"**Localization** (`localization.csv`, mIoU at the threshold chosen on the "
                   f"{rows['threshold_source'].iloc[0]}; Kong et al. Table 3), "
                   f"{' / '.join(METHODS[m] for m in methods)}: {'; '.join(parts)}.")]


def intervention_lines(iv: pd.DataFrame) -> list[str]:
    t = iv.set_index(["edit", "predictor", "level"])

    def r(edit, predictor, level, ci=True):
        row = t.loc[(edit, predictor, level)]
        return interval(row) if ci else f"{row['pearson']:.2f}"

    n = int(iv["n"].iloc[0])
    out = [f"**Intervention** (`intervention.csv`, Pearson r of each map with the change, 95% bootstrap interval; "
           f"Kong et al. Table 4), {n} edits with a word omitted: image level CMI as i^s (the authors' score) "
           f"{r('omit', 'cmi_s', 'image')}, as i^o {r('omit', 'cmi', 'image')}, attention during regeneration "
           f"{r('omit', 'attention_regen', 'image')}; pixel level CMI (i^o) {r('omit', 'cmi', 'pixel')}, attention "
           f"during regeneration {r('omit', 'attention_regen', 'pixel')}, on the draws "
           f"{r('omit', 'attention_itd', 'pixel')}."]
    if ("omit", "object_mask", "image") in t.index:
        out.append(f"Mask baselines (no model at all): the edited word's object mask "
                   f"{r('omit', 'object_mask', 'image')} image level, {r('omit', 'object_mask', 'pixel')} pixel level; "
                   f"the mask of all objects {r('omit', 'all_objects_mask', 'image')} and "
                   f"{r('omit', 'all_objects_mask', 'pixel')}. Paired differences at pixel level: CMI - object mask "
                   f"{r('omit', 'cmi-object_mask', 'pixel')}, CMI - all objects "
                   f"{r('omit', 'cmi-all_objects_mask', 'pixel')}.")
    if ("swap", "cmi", "image") in t.index:
        out.append(f"Swapped words ({int(iv[iv['edit'] == 'swap']['n'].iloc[0])} edits): image level CMI "
                   f"{r('swap', 'cmi_s', 'image')} (i^s of caption against swapped caption), attention "
                   f"{r('swap', 'attention_regen', 'image')}; pixel level CMI {r('swap', 'cmi', 'pixel', False)}, "
                   f"attention {r('swap', 'attention_regen', 'pixel', False)}.")
    return [bullet(" ".join(out))]


# ---- the block -----------------------------------------------------------------------------------------------------
def demo_block(results: str | Path, model: str = "shapes", dataset: str = "shapes") -> str:
    """The Markdown between (and with) the markers, from the run under ``results``."""
    results = Path(results)
    need = "the README's demo block"
    prov = read_json(results / "provenance.json", need)
    info = results / "info" / model / dataset
    v = prov.get("versions", {})
    commit = str(prov.get("git_commit", "?"))
    commit = commit.split("+")[0][:12] + ("+dirty" if commit.endswith("+dirty") else "")
    draws = prov["config"]["infodecomp"]
    counts = draws["n_draws"] if isinstance(draws["n_draws"], list) else [draws["n_draws"]]  # a list: nested counts
    head = (f"From the outputs of `make demo` under `results/` (the paths below are relative to it; `<model>` and "
            f"`<data set>` are both `{model}`): difflens "
            f"{prov.get('difflens_version', '?')}, commit {commit}, torch "
            f"{v.get('torch', '?')}, numpy {v.get('numpy', '?')}, run started {prov['started'][:16].replace('T', ' ')} "
            f"UTC. The numbers vary slightly across CPUs and library versions (float rounding in training changes "
            f"the last digits); the shapes world is not Stable Diffusion. Information numbers are in nats, "
            f"{max(counts)} {'stratified' if draws.get('stratified') else 'independent'} draws per image"
            + (f" (maps also after the first {', '.join(map(str, sorted(counts)[:-1]))})" if len(counts) > 1 else "")
            + ".")
    lines = [BEGIN, "<!-- generated: edit scripts/difflens/report/demo_numbers.py, not this block -->", "",
             textwrap.fill(head, WIDTH, break_long_words=False, break_on_hyphens=False), ""]
    lines += run_lines(results, model, dataset, prov)
    lines.append(check_line(read_json(results / "models" / model / "check.json", need), model))
    lines += classifier_lines(read_csv(results / "classify" / model / dataset / "accuracy.csv", need))
    lines += sae_lines(read_csv(results / "sae" / model / dataset / "summary.csv", need))
    lines += aro_lines(read_csv(info / "aro.csv", need))
    lines += localization_lines(read_csv(info / "localization.csv", need))
    lines += intervention_lines(read_csv(info / "intervention.csv", need))
    return "\n".join(lines + [END])


def replace_block(text: str, block: str) -> str:
    """``text`` with everything from its begin marker to its end marker replaced by ``block``; the rest untouched."""
    begins, ends = text.count(BEGIN), text.count(END)
    if begins != 1 or ends != 1 or text.index(BEGIN) > text.index(END):
        raise BlockError(f"README.md must hold {BEGIN} once and then {END} once (found {begins} and {ends})")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[stop:]
