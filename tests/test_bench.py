"""Every benchmark under bench/ at its smallest size, so that none rots between GPU runs.

``bash bench/gpu.sh --dry-run`` runs once (module fixture): bench/extract.py, bench/sae.py, bench/infodecomp.py,
bench/diffc.py and bench/precision.py at smoke size on the CPU, then bench/gpu_hours.py on their numbers, into one
report; the tests read every section's numbers back from it. bench/map_writes.py, bench/high_noise_error.py,
bench/shapes_checkpoint.py and bench/rule_times.py, which gpu.sh does not run, run here on their own. The GPU-hours
arithmetic is also checked in-process against numbers worked out by hand from the configs.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
SECTIONS = ["paper smoke", "activation extraction", "newer families at full size", "k-SAE", "information decomposition", "Diff-C on the fly",
            "bf16 vs fp32", "GPU-hours of the paper grids"]
NUMBER = r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?"

#: one xdist worker runs the dry run once and every test reading it
pytestmark = pytest.mark.xdist_group("bench")


def run(args: list[str], timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def numbers(line: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(NUMBER, line)]


def finite_positive(values) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(the finished process, the report's text, {section title: its text}) of ``bash bench/gpu.sh --dry-run``."""
    out = tmp_path_factory.mktemp("gpu") / "report.md"
    proc = run(["bash", str(BENCH / "gpu.sh"), "--dry-run", "--out", str(out)], timeout=600)
    text = out.read_text() if out.is_file() else ""
    sections = {}
    for block in text.split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        sections[title] = body
    return proc, text, sections


def section(dry_run, start: str) -> str:
    matches = [body for title, body in dry_run[2].items() if title.startswith(start)]
    assert len(matches) == 1, f"report sections starting {start!r}: {len(matches)} of {list(dry_run[2])}"
    return matches[0]


# ---- bench/gpu.sh --dry-run -----------------------------------------------------------------------------------
def test_dry_run_succeeds_with_every_section_in_order(dry_run):
    proc, text, sections = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failed, timed out or skipped: none" in text
    assert text.startswith("# difflens benchmarks on one GPU") and "**Dry run**" in text
    order = [next(i for i, title in enumerate(sections) if title.startswith(s)) for s in SECTIONS]
    assert order == sorted(order) and order[-1] == len(sections) - 1, list(sections)
    for title in list(sections)[1:]:
        assert "exit 0 after" in sections[title], title


def test_dry_run_paper_smoke_line_matches_the_makefile(dry_run):
    body = section(dry_run, "paper smoke")
    has_target = run(["make", "-n", "paper-smoke"]).returncode == 0
    expected = "Not run in a dry run" if has_target else "the Makefile has no `paper-smoke` target yet"
    assert expected in body


def test_extraction_rows(dry_run):
    body = section(dry_run, "activation extraction")
    rows = [line.split() for line in body.splitlines() if re.match(r"(sd15|dit)\s+[14]\s", line)]
    assert sorted((r[0], r[1]) for r in rows) == [("dit", "1"), ("dit", "4"), ("sd15", "1"), ("sd15", "4")]
    for r in rows:
        ref_s, ref_rate, ours_s, ours_rate = map(float, r[2:6])
        assert finite_positive([ref_s, ref_rate, ours_s, ours_rate, float(r[7])])
        assert float(r[6].rstrip("x")) == pytest.approx(ref_s / ours_s, rel=0.06, abs=0.06)
        assert 1 / ref_s == pytest.approx(ref_rate, rel=0.01, abs=0.006)


def test_sae_row(dry_run):
    body = section(dry_run, "k-SAE")
    row = re.search(rf"^activations\s+difflens\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})%", body, re.MULTILINE)
    assert row, body
    steps_per_s, fvu, dead = map(float, row.groups())
    assert finite_positive([steps_per_s, fvu]) and 0 <= dead <= 100


def test_infodecomp_numbers(dry_run):
    body = section(dry_run, "information decomposition")
    ref = float(re.search(rf"reference .*: ({NUMBER}) s/item", body).group(1))
    ours = float(re.search(rf"difflens .*: ({NUMBER}) s/item", body).group(1))
    ratio = float(re.search(rf"ratio at equal draws: ({NUMBER})x", body).group(1))
    assert finite_positive([ref, ours]) and ratio == pytest.approx(ref / ours, rel=0.05)
    shares = [numbers(line)[1:] for line in body.splitlines() if re.match(r"\s+\d+\s+(plain|stratified)\s", line)]
    assert len(shares) == 2 and all(len(s) == 7 for s in shares)
    assert all(0 <= v <= 1 for s in shares for v in s[:6])


def test_diffc_rows(dry_run):
    body = section(dry_run, "Diff-C on the fly")
    rows = {m.group(1): numbers(m.group(2)) for m in
            re.finditer(r"^(cached, read from HDF5|cached, held in memory|on the fly)\s{2,}(.*kB)$", body, re.M)}
    assert set(rows) == {"cached, read from HDF5", "cached, held in memory", "on the fly"}, body
    assert all(finite_positive(r) for r in rows.values())
    assert rows["cached, read from HDF5"][1] == 1.0
    # on the fly stores the latents only; the cache stores latents and maps
    assert rows["on the fly"][2] < rows["cached, read from HDF5"][2]


def test_precision_rows(dry_run):
    body = section(dry_run, "bf16 vs fp32")
    rows = [line for line in body.splitlines() if re.search(r"(i\^s totals|i\^o totals|maps)\s+\d", line)]
    assert len(rows) == 6, body
    for line in rows:
        rel_err, corr, *picks = numbers(line.split("totals")[-1].split("maps")[-1])
        # bf16 stays close to fp32 on the same inputs: a few per cent, correlation near 1
        assert 0 < rel_err < 0.5 and 0.9 < corr <= 1.0, line
        assert all(0 <= p <= 1 for p in picks)


def test_gpu_hours_tables(dry_run):
    from difflens.config import load_config

    body = section(dry_run, "GPU-hours of the paper grids")
    assert "### configs/revelio.yaml" in body and "### configs/infodecomp.yaml" in body
    rev = load_config(ROOT / "configs" / "revelio.yaml")
    grid = sum(len(m["layers"]) * len(m["timesteps"]) for m in rev["models"].values())
    n_sets = len(rev["extraction"]["datasets"])
    sae_runs = grid * n_sets * len(rev["sae"]["runs"]) * len(rev["sae"]["inputs"])
    diffc_runs = grid * n_sets * len(rev["classify"]["targets"])
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| work")]
    assert any(f"k-SAEs: {sae_runs} runs" in r for r in rows) and any(f"Diff-C: {diffc_runs} runs" in r for r in rows)
    assert sum(r.startswith("| extraction ") for r in rows) == len(rev["models"])
    for table in body.split("### ")[1:]:
        lines = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith(("| work", "| ---"))]
        total = lines.pop()
        counted = [r for r in lines if "not in the total" not in r]  # Diff-C before grouping: for comparison
        hours = [numbers(cell)[0] for r in counted for cell in (r.split("|")[4], r.split("|")[6])]
        assert finite_positive(hours) and "n/a" not in table
        for r in lines:  # GPU-h = count x seconds per unit / 3600
            cells = r.split("|")
            count, per_ours, h_ours = numbers(cells[2])[0], numbers(cells[3])[0], numbers(cells[4])[0]
            assert h_ours == pytest.approx(count * per_ours / 3600, rel=0.01)
        ours_total = numbers(total.split("|")[4])[0]
        assert ours_total == pytest.approx(sum(hours[0::2]), rel=0.02)


def test_gpu_sh_refuses_bad_arguments_and_a_machine_without_gpu(tmp_path):
    bad = run(["bash", str(BENCH / "gpu.sh"), "--fast"])
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    no_gpu = run(["bash", str(BENCH / "gpu.sh"), "--out", str(tmp_path / "r.md")],
                 env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert no_gpu.returncode == 2 and "no GPU visible" in no_gpu.stderr and not (tmp_path / "r.md").exists()


# ---- bench/gpu_hours.py arithmetic, in-process ------------------------------------------------------------------
@pytest.fixture
def gpu_hours():
    sys.path.insert(0, str(BENCH))
    import gpu_hours

    yield gpu_hours
    sys.path.remove(str(BENCH))


def test_gpu_hours_arithmetic(gpu_hours):
    extract = {"device": "X", "rows": [{"arch": a, "timesteps": t, "ours_s": o, "ref_s": r} for a, t, o, r in (
        ("sd15", 1, 0.01, 0.1), ("sd15", 4, 0.016, 0.4), ("dit", 1, 0.02, 0.2), ("dit", 4, 0.05, 0.8))]}
    # T = 5: 0.01 + 4 x 0.002; the reference 0.1 + 4 x 0.1 = 0.5 for 4 layers, x 2 for 8 layers
    assert gpu_hours.extraction_per_image(extract, "sd15", 5, 8) == pytest.approx((0.018, 1.0))
    assert gpu_hours.extraction_per_image(extract, "shapes", 5, 4) == (None, None)
    diffc = {"rows": [{"source": "on the fly", "seconds": 36.0, "epochs": 2, "n_train": 8, "n_val": 1, "n_test": 1},
                      {"source": "cached, held in memory", "seconds": 3.8, "epochs": 2, "n_train": 8, "n_val": 1,
                       "n_test": 1}]}
    # 2 x (8 + 1) + 1 = 19 images seen; reference: 0.1 / 4 layers + 3.8 / 19
    assert gpu_hours.diffc_per_image(diffc, extract) == pytest.approx((36 / 19, 0.025 + 0.2))
    text = "k-SAE benchmark: GPU, d 1280, n 81920, k 32, batch 8192, lr 1e-4\n\nactivations  difflens   40.00  0.1\n"
    sae = gpu_hours.parse_sae_table(text)
    assert sae == {"steps_per_s": 40.0, "d": 1280, "n": 81920, "batch": 8192}
    with pytest.raises(ValueError, match="activations difflens"):
        gpu_hours.parse_sae_table("nothing here")
    cfg = {"datasets": {"a": {"source": "pets"}, "b": {"source": "flowers102"}},
           "models": {"m": {"kind": "sd", "layers": ["x", "y"], "timesteps": [10, 25, 50]}},
           "extraction": {"models": [], "datasets": ["a", "b"]},
           "sae": {"models": [], "layers": ["x"], "timesteps": [], "inputs": ["pooled"],
                   "runs": {"r": {"steps": 100}}},
           "classify": {"models": [], "layers": [], "timesteps": [25], "targets": ["label"], "epochs": 3,
                        "mode": "on_the_fly", "group": "timestep", "width": 8, "batch_size": 4,
                        "group_memory_gb": 1}}
    cfg["models"]["m"]["resolution"] = None
    lines = {ln.work.split(":")[0]: ln for ln in gpu_hours.revelio_lines(cfg, {"extract": extract, "diffc": diffc,
                                                                              "sae": sae})}
    assert lines["extraction m"].count == 7349 + 8189
    assert lines["extraction m"].ours == pytest.approx(0.01 + 2 * 0.002)
    assert lines["k-SAEs"].count == 2 * 3 * 100 and lines["k-SAEs"].ours == pytest.approx(1 / 40)
    assert lines["k-SAEs"].ref == pytest.approx(1 / 4.6)
    # 2 layers at t = 25, per data set 3 x (train + val) + test
    assert lines["Diff-C"].count == 2 * (3 * (3312 + 368) + 3669 + 3 * (1020 + 1020) + 6149)
    # classify.group timestep: one job per data set trains both layers' nets, sharing the pass (36 - 3.8) / 19
    grouped = lines["Diff-C grouped (classify.group timestep)"]
    assert not lines["Diff-C"].in_total and grouped.in_total and "2 jobs of 2 classifiers" in grouped.work
    assert grouped.count == lines["Diff-C"].count and grouped.ref == lines["Diff-C"].ref
    assert grouped.ours == pytest.approx((36 - 3.8) / 19 / 2 + 3.8 / 19)
    info = {"infodecomp": {"n_draws": [5, 10], "models": ["m"],  # a list of counts runs its largest
                           "aro": {"datasets": ["a"], "max_items": 5},
                           "localize": {"datasets": ["b"], "max_images": 0, "ddim_steps": 5},
                           "intervene": {"datasets": ["b"], "solver": "heun", "steps": 4, "words_per_image": 1,
                                         "max_images": 2}},
            "datasets": {"a": {"source": "aro_coco_order"}, "b": {"source": "coco100_it"}}}
    measured = {"infodecomp": {"difflens_s_per_item": 3.0, "difflens_rows_per_item": 30,
                               "reference_s_per_item": 8.0, "reference_rows_per_item": 40}}
    aro, loc, iv = gpu_hours.infodecomp_lines(info, measured)
    assert (aro.count, aro.ours, aro.ref) == (5, pytest.approx(6 * 10 * 0.1), pytest.approx(10 * 10 * 0.2))
    assert (loc.count, loc.ours) == (100, pytest.approx((4 * 10 + 2 * 5) * 0.1))  # + the DDIM attention's calls
    # Heun: 2 calls x 4 steps for the inversion, the reconstruction and 2 edits; CMI: caption + context x 10 draws
    assert (iv.count, iv.ours) == (2, pytest.approx((8 * 4 + 2 * 10) * 0.1))
    with pytest.raises(ValueError, match="'shapes' has no benchmark row"):
        gpu_hours.revelio_lines({**cfg, "models": {"m": {**cfg["models"]["m"], "kind": "shapes"}}},
                                {"extract": extract, "diffc": diffc, "sae": sae})


# ---- the benchmarks gpu.sh does not run ------------------------------------------------------------------------
def test_rule_times_tables_snakemake_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s, rss in (("extract/sd15/a.tsv", 10.5, "900.0"), ("extract/sd15/b.tsv", 4.5, "-"),
                        ("train_sae/x/y.tsv", 30.0, "2000.4"), ("summary_page.tsv", 1.0, "50.0")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(header + f"{s}\t0:00:10\t{rss}\t1\t1\t1\t0\t0\t0.5\t3\n")
    proc = run([PYTHON, str(BENCH / "rule_times.py"), str(tmp_path)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2] == "| train_sae | 1 | 30.0 | 30.0 | 2,000 |"
    assert lines[3] == "| extract | 2 | 15.0 | 10.5 | 900 |"
    assert lines[4] == "| summary_page | 1 | 1.0 | 1.0 | 50 |"  # a rule without wildcards: its file's name
    assert lines[5] == "| **all** | 4 | 46.0 | 30.0 | |"
    empty = run([PYTHON, str(BENCH / "rule_times.py"), str(tmp_path / "none")], timeout=60)
    assert empty.returncode == 1 and "no benchmark files" in empty.stderr


def test_scale_smoke():
    """bench/scale.py at 1/500, 1/250 and 1/100 of each step: a row per step with its three sizes, positive peaks
    and times, and the rule's request."""
    proc = run([PYTHON, str(BENCH / "scale.py"), "--smoke"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {name: line for line in proc.stdout.splitlines()
            for name in ("localization IoU", "SAE analysis", "ARO aggregation", "Diff-C cached loading",
                         "browser latent pages") if line.startswith(name)}
    assert len(rows) == 5, proc.stdout
    for name, line in rows.items():
        values = numbers(line[len(name):])  # full size, three sizes, peak, s, full MB, full s, rule MB, ...
        full, *sizes = values[:4]
        assert sizes == sorted(sizes) and full > sizes[-1], (name, values)
        peak, secs, full_mb, full_s, asked = values[4:9]
        assert finite_positive([peak, asked]) and secs >= 0, (name, values)
        assert math.isfinite(full_mb) and math.isfinite(full_s), (name, values)  # smoke extrapolations: noise


def test_map_writes_smoke():
    proc = run([PYTHON, str(BENCH / "map_writes.py"), "--smoke"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if re.match(r"up_ft[12]\s", line)]
    assert [(r[0], r[2]) for r in rows] == [(layer, c) for layer in ("up_ft1", "up_ft2")
                                           for c in ("none", "lzf", "gzip")]
    for r in rows:
        mb_s, images_s, ratio = map(float, r[3:6])
        assert finite_positive([mb_s, images_s]) and 0.5 < ratio <= 1.01
        if r[2] == "none":
            assert ratio == pytest.approx(1.0, abs=0.01)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A 60-image shapes world (train and test splits)."""
    from difflens.data.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp("world")
    generate(root, ShapesConfig(n_images=60), progress=False)
    return root


def test_high_noise_error_smoke(tiny_world):
    proc = run([PYTHON, str(BENCH / "high_noise_error.py"), str(ROOT / "resources" / "shapes_model"), "--dataset",
                str(tiny_world), "--images", "4", "--mean-images", "8", "--timesteps", "700", "900", "--threads",
                "1"], timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["t"] for r in lines] == [700, 900]
    for r in lines:
        assert r["prediction_type"] == "v_prediction"
        assert finite_positive([r["noise_error"], r["data_mean_error"]])


def test_shapes_checkpoint_smoke(tiny_world, tmp_path):
    import torch
    from dataclasses import asdict

    from difflens.data.common import Dataset
    from difflens.models.shapes_arch import ShapesArch, build_model
    from difflens.train.shapes import training_words

    arch = ShapesArch(block_out_channels=(16, 32, 32), text_width=32)
    captions = list(Dataset.load(tiny_world).split("train")["caption"])
    _, text_encoder, unet, _ = build_model(training_words(captions), arch, 0)
    history = [float(i) for i in range(80)]
    torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "step": 80,
                "history": history, "arch": asdict(arch)}, tmp_path / "train_state.pt")
    proc = run([PYTHON, str(BENCH / "shapes_checkpoint.py"), str(tmp_path / "train_state.pt"), "--dataset",
                str(tiny_world), "--scenes", "4", "--draws", "2", "--threads", "1"], timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["step"] == 80 and out["loss_50"] == pytest.approx(sum(history[-50:]) / 50)
    assert out["relation"] in (0, 0.25, 0.5, 0.75, 1) and out["attribute"] in (0, 0.25, 0.5, 0.75, 1)
    for t in (100, 400, 800):
        assert finite_positive(out[f"error_t{t}"].values()) and math.isfinite(out[f"swap_vs_caption_t{t}"])
