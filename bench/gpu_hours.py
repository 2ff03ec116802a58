"""GPU-hours of the paper grids by arithmetic: the counts of configs/revelio.yaml and configs/infodecomp.yaml times
the per-unit costs the benchmarks measured, for difflens and for the reference layout beside it. Prints markdown.

Counts read from the configs (validated and filled in by ``difflens.config.load_config``): the extraction models,
their data sets, layers and timesteps; the SAE runs (``sae.runs`` x ``sae.inputs`` x the selected layers and
timesteps of each SAE model and data set) and their steps; the Diff-C runs (targets x the selected layers and
timesteps) and their epochs; the information stages' data sets, draws, solver steps and words per image. Data-set
sizes are the published ones (``DATASETS`` below; the converters in ``scripts/difflens/data/`` give the splits);
the pipeline does not know them before it downloads.

Per-unit costs, from the benchmarks' ``--json`` files (and bench/sae.py's printed table):

* extraction, s per image for all of a model's layers at its T timesteps: bench/extract.py's rows at T = 1 and 4,
  extended linearly to T (SD 2.1-base at SD 1.5's row: the same UNet widths; DiT at DiT-XL/2's). The reference layout
  runs one full fp32 pass per layer and timestep, so its cost is also scaled by layers / 4;
* k-SAE, s per step: bench/sae.py's difflens row on ``activations`` (at its d and n; the SD up_ft2 (d 640) and DiT
  (d 1152) SAEs cost less, so this is an upper bound). The reference layout's 4.6 steps/s is the H100 figure of
  docs/reference.md, section 5 (bench/sae.py no longer times a Revelio-style SAE);
* Diff-C, s per image seen (epochs x (train + val) + test, all at the same cost): bench/diffc.py's on-the-fly row
  (SD 1.5 up_ft1, used for every model and layer). The reference layout: one full fp32 pass with the VAE and the
  text encoder per image seen (bench/extract.py's reference at T = 1, / 4 layers) plus the classifier (the cached,
  in-memory row);
* information decomposition, s per UNet row (one image at one draw and one prompt) at 512 px: bench/infodecomp.py's
  difflens (bf16, shared empty prompt) and reference (fp32, the empty prompt recomputed per caption) items, divided
  by their rows. Rows per unit are counted below (``infodecomp_lines``).

    python bench/gpu_hours.py --extract ex.json --diffc dc.json --infodecomp id.json --sae-log sae.txt
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from difflens import resources  # noqa: E402
from difflens.config import draw_counts, load_config  # noqa: E402

#: published sizes (train, val, test) as the converters split them
DATASETS = {
    "pets": (3312, 368, 3669),            # Oxford-IIIT Pet: trainval 3,680 (10% to val, per class), test 3,669
    "caltech101": (6074, 868, 1735),      # Caltech-101 without BACKGROUND_Google: 8,677, split 0.7 / 0.1 / 0.2
    "aircraft": (3334, 3333, 3333),       # FGVC-Aircraft 2013b, published splits
    "flowers102": (1020, 1020, 6149),     # Oxford Flowers-102, published splits
    "aro_vg_relation": (0, 0, 23937),     # ARO VG-Relation items (image + true and swapped caption)
    "aro_vg_attribution": (0, 0, 28748),  # ARO VG-Attribution items
    "aro_coco_order": (0, 0, 25010),      # COCO Karpathy test captions (each + 4 word-order perturbations)
    "aro_flickr_order": (0, 0, 5000),     # Flickr30k test captions (each + 4 perturbations)
    "coco_it": (0, 0, 6900),              # COCO-IT image/word rows, about 6.9k (docs/reference.md, 2.6)
    "coco100_it": (0, 0, 100),            # 10 categories x 10 images
    "coco_wl": (0, 0, 70),                # 10 rows x 7 word classes
}
ORDER_CAPTIONS = 5                        # an order item: the caption and its 4 perturbations
REFERENCE_SAE_STEPS_PER_S = 4.6           # Revelio layout, d 1280, n 81,920, batch 8192, H100 (docs/reference.md, 5)
BENCH_LAYERS = 4                          # layers bench/extract.py extracts per pass
ARCH_OF_KIND = {"sd": "sd15", "dit": "dit"}


@dataclass
class Line:
    """One row of a GPU-hours table: ``count`` units of work, seconds per unit of each layout (None: not measured)."""

    work: str
    count: float
    unit: str
    ours: float | None
    ref: float | None
    basis: str
    in_total: bool = True  # False: a row shown for comparison (the same work done another way)


def hours(count: float, seconds: float | None) -> float | None:
    return None if seconds is None else count * seconds / 3600


# ---- measured per-unit costs ----------------------------------------------------------------------------------
def read_json(path) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def parse_sae_table(text: str) -> dict:
    """bench/sae.py's output -> {steps_per_s, d, n, batch} of its difflens row on ``activations``."""
    head = re.search(r"\bd (\d+), n (\d+), k \d+, batch (\d+)", text)
    row = re.search(r"^activations\s+difflens\s+([0-9.]+)\s", text, re.MULTILINE)
    if not head or not row:
        raise ValueError("bench/sae.py output has no 'd .., n .., k .., batch ..' header or no 'activations "
                         "difflens <steps/s>' row")
    return {"steps_per_s": float(row.group(1)), "d": int(head.group(1)), "n": int(head.group(2)),
            "batch": int(head.group(3))}


def extraction_per_image(extract: dict | None, arch: str, timesteps: int, layers: int) -> tuple:
    """(difflens, reference) s per image for ``layers`` layers at ``timesteps`` timesteps, from the T = 1 and
    T = 4 rows of ``arch`` (linear in T); (None, None) when that arch was not measured."""
    rows = {r["timesteps"]: r for r in (extract or {}).get("rows", []) if r["arch"] == arch}
    if not {1, 4} <= set(rows):
        return None, None

    def at(key):
        per_t = (rows[4][key] - rows[1][key]) / 3
        return rows[1][key] + (timesteps - 1) * per_t

    return at("ours_s"), at("ref_s") * layers / BENCH_LAYERS


def diffc_per_image(diffc: dict | None, extract: dict | None, heads: int = 1) -> tuple:
    """(difflens on the fly, reference) s per image seen by one Diff-C classifier; with ``heads`` classifiers per
    job (classify.group) difflens' denoiser pass (on the fly less the classifier alone, the cached in-memory row) is
    shared by them."""
    rows = {r["source"]: r for r in (diffc or {}).get("rows", [])}

    def per_image(r):
        return r["seconds"] / (r["epochs"] * (r["n_train"] + r["n_val"]) + r["n_test"])

    ours = per_image(rows["on the fly"]) if "on the fly" in rows else None
    head = per_image(rows["cached, held in memory"]) if "cached, held in memory" in rows else None
    if ours is not None and head is not None and heads > 1:
        ours = (ours - head) / heads + head
    ref_pass = {r["timesteps"]: r["ref_s"] for r in (extract or {}).get("rows", []) if r["arch"] == "sd15"}.get(1)
    ref = ref_pass / BENCH_LAYERS + head if ref_pass is not None and head is not None else None
    return ours, ref


def unet_row_seconds(info: dict | None) -> tuple:
    """(difflens, reference) s per UNet row from bench/infodecomp.py's items."""
    if not info:
        return None, None
    return (info["difflens_s_per_item"] / info["difflens_rows_per_item"],
            info["reference_s_per_item"] / info["reference_rows_per_item"])


# ---- counts -------------------------------------------------------------------------------------------------
def size_of(name: str, cfg: dict) -> tuple[int, int, int]:
    source = cfg["datasets"][name]["source"]
    if source not in DATASETS:
        raise ValueError(f"data set {name!r} (source {source!r}) has no known size; known: {sorted(DATASETS)}")
    return DATASETS[source]


def grid(cfg: dict, model: str, section: dict) -> list[tuple[int, str]]:
    """(timestep, layer) pairs of ``model`` that a stage's section selects ([] = all), as rules/common.smk."""
    m = cfg["models"][model]
    return [(t, layer) for t in m["timesteps"] if not section["timesteps"] or t in section["timesteps"]
            for layer in m["layers"] if not section["layers"] or layer in section["layers"]]


def revelio_lines(cfg: dict, measured: dict) -> list[Line]:
    """Extraction per model, the SAE runs and the Diff-C runs of a Revelio-style config."""
    models = cfg["extraction"]["models"] or list(cfg["models"])
    datasets = cfg["extraction"]["datasets"]
    images = sum(sum(size_of(d, cfg)) for d in datasets)
    lines = []
    for name in models:
        m = cfg["models"][name]
        if m["kind"] not in ARCH_OF_KIND:
            raise ValueError(f"model {name!r}: kind {m['kind']!r} has no benchmark row; known: {list(ARCH_OF_KIND)}")
        arch = ARCH_OF_KIND[m["kind"]]
        ours, ref = extraction_per_image(measured["extract"], arch, len(m["timesteps"]), len(m["layers"]))
        lines.append(Line(f"extraction {name}: {len(m['layers'])} layers x {len(m['timesteps'])} timesteps",
                          images, "images", ours, ref, f"extract.py {arch}, T = 1 and 4 extended to "
                                                       f"{len(m['timesteps'])}"))
    sae = cfg["sae"]
    runs = [(name, d, r) for name in (sae["models"] or models) for d in datasets
            for r in sae["runs"].values() for _ in sae["inputs"] for _ in grid(cfg, name, sae)]
    if runs:
        steps = sum(r["steps"] for _, _, r in runs)
        rate = measured["sae"]
        ours = 1 / rate["steps_per_s"] if rate else None
        basis = f"sae.py difflens, d {rate['d']}, n {rate['n']}, batch {rate['batch']}" if rate else "sae.py"
        lines.append(Line(f"k-SAEs: {len(runs)} runs ({', '.join(sae['runs'])}) of "
                          f"{'/'.join(sorted({f'{r_steps:,}' for r_steps in (r['steps'] for _, _, r in runs)}))} "
                          f"steps", steps, "steps", ours,
                          1 / REFERENCE_SAE_STEPS_PER_S, basis + f"; reference {REFERENCE_SAE_STEPS_PER_S} steps/s "
                                                                 f"(H100, docs)"))
    cl = cfg["classify"]
    seen, n_runs, n_jobs, heads = 0, 0, 0, set()
    for name in (cl["models"] or models) if cl["targets"] else []:
        pairs = grid(cfg, name, cl)
        per_job = resources.diffc_heads_per_job(
            resources.diffc_group(cl, pairs, cfg["models"][name]["resolution"] or 512), pairs)
        heads.add(per_job)
        for d in datasets:
            train, val, test = size_of(d, cfg)
            k = len(cl["targets"]) * len(pairs)
            n_runs += k
            n_jobs += k // per_job
            seen += k * (cl["epochs"] * (train + val) + test)
    if n_runs:
        ours, ref = diffc_per_image(measured["diffc"], measured["extract"])
        grouped = max(heads) > 1
        lines.append(Line(f"Diff-C: {n_runs} runs of {cl['epochs']} epochs ({cl['mode']}), one job each"
                          + (" (before grouping; not in the total)" if grouped else ""), seen, "images seen", ours,
                          ref, "diffc.py on the fly (SD 1.5 up_ft1); reference: one fp32 pass + classifier",
                          in_total=not grouped))
        if grouped:
            ours, _ = diffc_per_image(measured["diffc"], measured["extract"], max(heads))
            lines.append(Line(f"Diff-C grouped (classify.group {cl['group']}): {n_jobs} jobs of {max(heads)} "
                              f"classifiers", seen, "images seen", ours, ref,
                              "one denoiser pass per batch for every classifier of a job (diffc.py: on the fly "
                              "less cached = the pass)"))
    return lines


def infodecomp_lines(cfg: dict, measured: dict) -> list[Line]:
    """ARO, localization and intervention of an information-decomposition config, in UNet rows per unit."""
    info = cfg["infodecomp"]
    draws = draw_counts(info)[-1]  # a list of counts runs its largest (the smaller ones are its first draws)
    ours, ref = unet_row_seconds(measured["infodecomp"])
    lines = []

    def add(work, count, unit, rows_ours, rows_ref, basis):
        lines.append(Line(work, count, unit, None if ours is None else ours * rows_ours,
                          None if ref is None else ref * rows_ref, basis))

    def items(name, cap):
        n = size_of(name, cfg)[2]
        return min(n, cap) if cap else n

    for model in info["models"]:
        for d in info["aro"]["datasets"]:
            captions = ORDER_CAPTIONS if "order" in cfg["datasets"][d]["source"] else 2
            add(f"{model} ARO {d}", items(d, info["aro"]["max_items"]), "items", (1 + captions) * draws,
                2 * captions * draws, f"{1 + captions} prompts x {draws} draws; reference {2 * captions} x {draws}")
        for d in info["localize"]["datasets"]:
            ddim = 2 * info["localize"]["ddim_steps"]  # attention_ddim: inversion + regeneration (per caption: at most)
            add(f"{model} localization {d}", items(d, info["localize"]["max_images"]), "word rows", 4 * draws + ddim,
                4 * draws + ddim, f"word, empty prompt, caption, context x {draws} draws + {ddim} DDIM calls")
        iv = info["intervene"]
        solver_calls = (2 if iv["solver"] == "heun" else 1) * iv["steps"]
        edits = 2 * iv["words_per_image"]  # each word omitted and (when the swap table names it) swapped
        rows = solver_calls * (1 + 1 + edits) + (1 + iv["words_per_image"]) * draws
        for d in iv["datasets"]:
            add(f"{model} intervention {d}", items(d, iv["max_images"]), "images", rows, rows,
                f"invert + reconstruct + {edits} edits x {solver_calls} UNet calls, CMI {draws} draws")
    return lines


# ---- output -------------------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if abs(x) < 100 else f"{x:,.0f}"


def table(lines: list[Line]) -> str:
    out = ["| work | count | difflens s per unit | difflens GPU-h | reference s per unit | reference GPU-h | basis |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for ln in lines:
        out.append(f"| {ln.work} | {ln.count:,.0f} {ln.unit} | {fmt(ln.ours, 4)} | {fmt(hours(ln.count, ln.ours))} | "
                   f"{fmt(ln.ref, 4)} | {fmt(hours(ln.count, ln.ref))} | {ln.basis} |")
    total = {k: [hours(ln.count, getattr(ln, k)) for ln in lines if ln.in_total] for k in ("ours", "ref")}
    cell = {k: fmt(sum(v)) if None not in v else "n/a (a row is not measured)" for k, v in total.items()}
    out.append(f"| **total** | | | **{cell['ours']}** | | **{cell['ref']}** | |")
    return "\n".join(out)


def sizes_note(cfg: dict, names: list[str]) -> str:
    return "; ".join(f"{n} {sum(size_of(n, cfg)):,}" + (" (train / val / test {:,} / {:,} / {:,})".format(
        *size_of(n, cfg)) if size_of(n, cfg)[0] else "") for n in names)


def report(revelio: dict, infodecomp: dict, measured: dict) -> str:
    devices = sorted({m["device"] for m in (measured["extract"], measured["diffc"], measured["infodecomp"]) if m})
    smoke = any(m and m.get("scale") == "smoke" for m in measured.values())
    parts = [f"GPU-hours by arithmetic: seconds per unit, as the benchmarks measured them on "
             f"{', '.join(devices) or 'nothing'}, times the count of each config; n/a where a benchmark did not run."]
    if smoke:
        parts += ["", "**Dry run**: smoke-scale networks on a CPU measured these rows; the hours below check the "
                      "arithmetic only and say nothing about a GPU."]
    rev = revelio_lines(revelio, measured)
    parts += ["", "### configs/revelio.yaml", "", table(rev), "",
              f"Data sets: {sizes_note(revelio, revelio['extraction']['datasets'])}."]
    info = infodecomp_lines(infodecomp, measured)
    names = list(dict.fromkeys(d for s in ("aro", "localize", "intervene") for d in infodecomp["infodecomp"][s][
        "datasets"]))
    parts += ["", "### configs/infodecomp.yaml", "", table(info), "", f"Data sets: {sizes_note(infodecomp, names)}."]
    return "\n".join(parts) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--extract", help="bench/extract.py --json file")
    ap.add_argument("--diffc", help="bench/diffc.py --json file")
    ap.add_argument("--infodecomp", help="bench/infodecomp.py --json file")
    ap.add_argument("--sae-log", help="bench/sae.py's printed output")
    ap.add_argument("--revelio", default=str(ROOT / "configs" / "revelio.yaml"))
    ap.add_argument("--infodecomp-config", default=str(ROOT / "configs" / "infodecomp.yaml"))
    args = ap.parse_args(argv)
    measured = {"extract": read_json(args.extract), "diffc": read_json(args.diffc),
                "infodecomp": read_json(args.infodecomp), "sae": None}
    notes = []
    try:
        measured["sae"] = parse_sae_table(Path(args.sae_log).read_text()) if args.sae_log else None
    except (OSError, ValueError) as exc:
        notes.append(f"\nThe k-SAE row is not measured: {exc}.\n")
    text = report(load_config(args.revelio), load_config(args.infodecomp_config), measured) + "".join(notes)
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
