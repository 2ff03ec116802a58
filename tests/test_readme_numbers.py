"""scripts/readme_numbers.py (``make readme-numbers``) on a small results folder of hand-made tables in the formats the
rules write (provenance.json, check.json, accuracy.csv, the SAE summary.csv, aro.csv, localization.csv,
intervention.csv, benchmark files, an activations folder): the README's marked block is rewritten with those numbers,
the text around it is left as it was, and a missing input or marker stops it with a message naming what is missing."""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import readme_numbers  # noqa: E402
from difflens.report.demo_numbers import BEGIN, END, WIDTH  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")
STARTED = datetime(2026, 1, 2, 3, 4, 0, tzinfo=timezone.utc)
OUTSIDE = ("# A README\n\nText before the block, with a number that stays: 0.123.\n\n", "\n\nText after it: 4.56.\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def accuracy_rows() -> list[dict]:
    """Two layers (a, b) at t = 25 and 900: Diff-C on `label`, probes on `label`, colour presence, shape, n_objects."""
    rows = []

    def add(layer, t, target, classifier, val, test, majority):
        rows.append({"model": "shapes", "dataset": "shapes", "layer": layer, "timestep": t, "target": target,
                     "classifier": classifier, "val_accuracy": val, "test_accuracy": test, "epochs": 3,
                     "seconds": 1.0, "n_train": 80, "n_classes": 12, "majority_accuracy": majority})

    for layer, (early, late) in {"a": (0.50, 0.08), "b": (0.80, 0.09)}.items():
        add(layer, 25, "label", "diffc", early + 0.01, early, 0.10)
        add(layer, 900, "label", "diffc", late, late, 0.10)
    for layer, shift in {"a": 0.0, "b": 0.01}.items():
        add(layer, 25, "label", "linear_probe", 0.40 + shift, 0.40 + 5 * shift, 0.10)
        add(layer, 900, "label", "linear_probe", 0.08, 0.09 + shift, 0.10)
        add(layer, 25, "shape", "linear_probe", 0.4, 0.44 + 8 * shift, 0.34)
        add(layer, 900, "shape", "linear_probe", 0.3, 0.35, 0.34)
        add(layer, 900, "n_objects", "linear_probe", 0.8, 0.81, 0.80)
        for c in COLOURS:
            add(layer, 25, f"has_{c}", "linear_probe", 0.9, 0.97 + 3 * shift, 0.5)
            add(layer, 900, f"has_{c}", "linear_probe", 0.5, 0.50 + 2 * shift, 0.5)
    return rows


def sae_rows() -> list[dict]:
    rows = []
    for t, base in ((25, 0.5), (900, 0.25)):
        for j, layer in enumerate(("a", "b")):
            rows.append({"model": "shapes", "dataset": "shapes", "layer": layer, "timestep": t, "input": "pooled",
                         "run": "shapes", "n_latents": 8 * (j + 1), "val_fvu": 0.01 + 0.02 * j,
                         "train_dead_fraction": 0.125 * j * (t == 900), "split": "train", "n_images": 800,
                         "purity": base + 0.1 * j, "untrained_purity": base + 0.05, "random_directions_purity": base,
                         "random_purity_mean": 0.26, "random_purity_p95": 0.4, "null_purity_mean_p95": 0.28,
                         "null_purity_p_value": 0.001 if t == 25 else 0.4, "better_than_random": t == 25,
                         "untrained_null_purity_p_value": 0.001, "null_purity_beyond_share": 0.25 * (t == 25),
                         "null_purity_beyond_chance": 0.016,
                         "best_auroc_max": 0.9 if t == 25 else 0.53,
                         "untrained_best_auroc_max": 0.8 if t == 25 else 0.52,
                         **{f"auroc:has_{c}=1": 0.9 + 0.02 * i + 0.01 * j for i, c in enumerate(COLOURS)},
                         **{f"untrained_auroc:has_{c}=1": 0.8 + 0.03 * i for i, c in enumerate(COLOURS)}})
    return rows


def aro_rows() -> list[dict]:
    rows = []
    for kind, (i_s, i_o) in {"relation": (1.0, 0.25), "attribute": (0.75, 0.5), "order": (0.5, 0.0)}.items():
        for score, acc in (("i_s", i_s), ("err", i_s), ("i_o", i_o)):
            rows.append({"kind": kind, "score": score, "metric": "accuracy", "group": "", "n": 8, "accuracy": acc,
                         "stderr": 0.1})
    for group, i_o in (("left", 0.5), ("above", 0.0)):
        for score, acc in (("i_s", 1.0), ("i_o", i_o)):
            rows.append({"kind": "relation", "score": score, "metric": "group", "group": group, "n": 4,
                         "accuracy": acc, "stderr": ""})
    return rows


def localization_rows() -> list[dict]:
    methods = ("whole_image", "mi", "cmi", "attention_itd", "attention_ddim", "attention+cmi")
    return [{"word_type": w, "n": n, "threshold_source": "val split",
             **{m: 0.1 * (k + 1) + add for k, m in enumerate(methods)},
             **{f"{m}:oracle": 0.1 * (k + 1) + add for k, m in enumerate(methods) if m != "whole_image"}}
            for w, n, add in (("all", 10, 0.0), ("object", 6, 0.01), ("relation", 4, 0.02))]


def intervention_rows() -> list[dict]:
    rows = []
    for edit in ("omit", "swap"):
        for k, predictor in enumerate(("cmi", "cmi_s", "attention_regen", "attention_itd", "object_mask",
                                       "all_objects_mask", "cmi-object_mask", "cmi-all_objects_mask")):
            for level, add in (("image", 0.0), ("pixel", 0.05)):
                r = 0.33 - 0.1 * k + add + (0.01 if edit == "swap" else 0)
                rows.append({"edit": edit, "predictor": predictor, "level": level, "n": 6, "pearson": r,
                             "ci_low": r - 0.21, "ci_high": r + 0.19})
    return rows


@pytest.fixture
def results(tmp_path) -> Path:
    r = tmp_path / "results"
    r.mkdir()
    (r / "provenance.json").write_text(json.dumps({
        "difflens_version": "9.9.9", "git_commit": "0123456789abcdef0123+dirty", "started": STARTED.isoformat(),
        "versions": {"torch": "1.2.3", "numpy": "4.5.6"},
        "config": {"extraction": {"save_maps": True}, "models": {"shapes": {"layers": ["a", "b"],
                                                                             "timesteps": [25, 900]}},
                   "infodecomp": {"n_draws": 8, "stratified": True}}}))
    for rel, seconds, after in (("train_sae/a.tsv", 10.0, 60), ("train_sae/b.tsv", 20.0, 90),
                                ("summary_page.tsv", 1.5, 125)):
        f = r / "benchmarks" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:{int(seconds):02d}\t100.0\n")
        os.utime(f, (STARTED.timestamp() + after,) * 2)
    shard = r / "activations" / "shapes" / "shapes" / "t25" / "a" / "shard-0.h5"
    shard.parent.mkdir(parents=True)
    with open(shard, "wb") as f:
        f.truncate(1_250_000_000)  # sparse: its size counts, nothing is written
    check = r / "models" / "shapes" / "check.json"
    check.parent.mkdir(parents=True)
    check.write_text(json.dumps({"dataset": "shapes", "n_test_images": 20, "loss_conditional": 0.02,
                                 "loss_unconditional": 0.03, "samples": {"n": 4, "follow_caption": 0.75}}))
    write_csv(r / "classify" / "shapes" / "shapes" / "accuracy.csv", accuracy_rows())
    write_csv(r / "sae" / "shapes" / "shapes" / "summary.csv", sae_rows())
    info = r / "info" / "shapes" / "shapes"
    write_csv(info / "aro.csv", aro_rows())
    write_csv(info / "localization.csv", localization_rows())
    write_csv(info / "intervention.csv", intervention_rows())
    return r


@pytest.fixture
def readme(tmp_path) -> Path:
    path = tmp_path / "README.md"
    path.write_text(OUTSIDE[0] + f"{BEGIN}\nold numbers: Diff-C 0.88\n{END}" + OUTSIDE[1])
    return path


def run(results: Path, readme: Path, *extra: str) -> int:
    return readme_numbers.main(["--results", str(results), "--readme", str(readme), *extra])


def test_the_block_is_rewritten_from_the_results_and_nothing_else(results, readme):
    assert run(results, readme, "--check") == 1  # the old block is out of date
    assert run(results, readme) == 0
    text = readme.read_text()
    before, rest = text.split(BEGIN)
    block, after = rest.split(END)
    assert before == OUTSIDE[0] and after == OUTSIDE[1]
    assert "old numbers" not in block
    flat = " ".join(block.split())
    expected = [
        "difflens 9.9.9, commit 0123456789ab+dirty, torch 1.2.3, numpy 4.5.6, run started 2026-01-02 03:04 UTC",
        "vary slightly across CPUs and library versions", "8 stratified draws per image",
        "3 jobs with a benchmark file, 32 job seconds in all", "`train_sae` 30 s in 2 jobs",
        "pipeline wall time 2 min 5 s", "1.25 GB (pooled vectors and float16 maps of 2 layers x 2 timesteps",
        "held-out loss 0.02000 with the caption vs 0.03000", "first 20 test images; 3 of 4 DDIM samples",
        # Diff-C: ranges per timestep, the best layer at the first, the val-chosen best
        "`label`: 12 classes, chance 0.08, majority rate 0.10): t = 25: 0.50-0.80 (best b), t = 900: 0.08-0.09",
        "Table 5): 0.800 (b, t = 25)",
        "`label`: t = 25: 0.40-0.45, t = 900: 0.09-0.10; chosen on val 0.450 (b, t = 25)",
        "is read at 0.97-1.00 in every layer (at t = 25 and 900: 0.50-1.00), `shape` only at 0.44-0.52",
        "within 0.02 of its majority rate (`n_objects` 0.81, majority rate 0.80)",
        # SAEs against their controls
        "4 SAEs, up to 16 latents, read on 800 train images",
        "t = 25: 0.50-0.60 (mean 0.55, purest b), t = 900: 0.25-0.35 (mean 0.30, purest b)",
        "untrained SAE t = 25: 0.55, t = 900: 0.30", "mean 0.26, 95th percentile of one set 0.40; against the null",
        "(95th percentile 0.28), purity is better than random (p < 0.05) at 2 of 4 SAEs (untrained controls: 4 of 4), "
        "and 0-25% of latents are above the single-set 95th percentile, where 1.6% of random sets are.",
        "purer than its untrained control at 2 of 4",
        "AUROC 0.91 (red), 0.93 (green), 0.95 (blue), 0.97 (yellow), where the untrained SAE's best reaches 0.80-0.89",
        "at t = 900 the best latent of every SAE reaches 0.53 over every attribute value (untrained 0.52)",
        "Val FVU is at most 0.03", "b up to 12.5% of its 16, every other layer at most 0.0%",
        # information
        "8 test images", "relation swap / colour swap / word order: i^s 1.00 / 0.75 / 0.50; denoising error "
        "1.00 / 0.75 / 0.50; i^o 0.25 / 0.50 / 0.00", "i^o 0.00 (above), 0.50 (left); i^s 1.00 on every relation",
        "threshold chosen on the val split", "all words (10 rows) 0.10, 0.20, 0.30, 0.40, 0.50, 0.60; object words "
        "(6 rows) 0.11, 0.21, 0.31, 0.41, 0.51, 0.61; relation words (4 rows) 0.12",
        "6 edits with a word omitted: image level CMI as i^s (the authors' score) 0.23 [0.02, 0.42], as i^o 0.33 "
        "[0.12, 0.52], attention during regeneration 0.13 [-0.08, 0.32]; pixel level CMI (i^o) 0.38 [0.17, 0.57], "
        "attention during regeneration 0.18 [-0.03, 0.37], on the draws 0.08 [-0.13, 0.27].",
        "CMI - all objects -0.32 [-0.53, -0.13]", "Swapped words (6 edits): image level CMI 0.24 [0.03, 0.43]",
    ]
    missing = [e for e in expected if e not in flat]
    assert not missing, f"{missing}\n{block}"
    assert max(len(line) for line in block.splitlines()) <= WIDTH
    assert run(results, readme, "--check") == 0 and run(results, readme) == 0 and readme.read_text() == text


def test_a_missing_input_names_the_file_and_leaves_the_readme(results, readme, capsys):
    (results / "info" / "shapes" / "shapes" / "aro.csv").unlink()
    old = readme.read_text()
    assert run(results, readme) == 2
    err = capsys.readouterr().err
    assert f"{results}/info/shapes/shapes/aro.csv" in err and "collect_aro" in err
    assert readme.read_text() == old


def test_markers_must_be_there_once(results, readme, capsys):
    readme.write_text(OUTSIDE[0] + OUTSIDE[1])
    assert run(results, readme) == 2 and BEGIN in capsys.readouterr().err
    readme.write_text(f"{END}\n{BEGIN}\n")
    assert run(results, readme) == 2 and "found 1 and 1" in capsys.readouterr().err


def test_the_repository_readme_carries_the_block():
    """README.md holds the block once, with the note that the numbers vary, and `make readme-numbers` writes it."""
    text = (ROOT / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)
    block = text[text.index(BEGIN):text.index(END)]
    assert "vary slightly across CPUs and library versions" in " ".join(block.split())
    assert "readme-numbers:" in (ROOT / "Makefile").read_text()
