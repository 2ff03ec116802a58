"""Faults, on the real rules run locally: an interrupted run, a job that fails once, one that keeps failing, and an
input that changes after a run.

Each test runs the workflow as a subprocess from the repository root with profiles/local and a config file in its
temp dir. Faults come from outside the rules: the run or the job is killed with SIGKILL, or the fault injector in
tests/workflows/faults (on PYTHONPATH) kills a rule's first attempts, or a data set's folder is empty.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from workflows.runs import ROOT, RUN_RECORD_FILES, assert_same_outputs, printed_jobs, run, snakemake_cmd, write_config

FAULTS = Path(__file__).parent / "workflows" / "faults"
N_IMAGES = 1500  # about 5 s of data set generation: long enough to be cut off half way


def local(targets, configfile, *options):
    return snakemake_cmd(targets, configfile, "--profile", "profiles/local", "--cores", "2", *options)


def shapes_config(results: Path, **datasets) -> dict:
    """The shapes world with ``N_IMAGES`` images, plus any further data sets."""
    return {"results": str(results),
            "datasets": {"shapes": {"source": "shapes", "params": {"n_images": N_IMAGES}}, **datasets}}


def jobs_run(output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a Snakemake run printed, in order."""
    return [(job.rule, job.wildcards) for job in printed_jobs(output)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The shapes data set from one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp, shapes_config(tmp / "results"))
    run(local([tmp / "results/data/shapes/dataset.json"], cfg))
    return tmp / "results"


@pytest.mark.parametrize("victim", ["run", "job"])
def test_interrupted_run_leaves_no_partial_output_and_resumes_to_identical_outputs(tmp_path, reference, victim):
    """SIGKILL half way through the data set: of Snakemake and its job together (a crashed login node) or of the
    job alone (the OOM killer, a time limit). No output is left; the rerun's outputs equal an uninterrupted run's."""
    results = tmp_path / "results"
    cfg = write_config(tmp_path, shapes_config(results))
    target = results / "data/shapes/dataset.json"
    with open(tmp_path / "interrupted.log", "w") as log:
        proc = subprocess.Popen(local([target], cfg), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        images = results / "data/shapes/images"
        deadline = time.monotonic() + 300
        while not images.is_dir() or sum(1 for _ in os.scandir(images)) < 100:
            assert proc.poll() is None, (tmp_path / "interrupted.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job never started writing images"
            time.sleep(0.05)
        if victim == "run":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            (job,) = [p for p in psutil.Process(proc.pid).children(recursive=True)
                      if p.name().startswith("python") and p.cmdline()[-1].endswith(".prepare_dataset.py")]
            job.kill()
        proc.wait(timeout=120)
    assert proc.returncode != 0
    written = sum(1 for _ in os.scandir(images))
    assert 0 < written < N_IMAGES, "the job was not cut off half way"
    assert not target.exists(), "an interrupted job left its output behind"

    if victim == "run":  # a killed Snakemake leaves its lock behind: `snakemake --unlock`, as docs/cluster.md says
        run(local([target], cfg, "--unlock"))
    rerun = run(local([target], cfg))
    assert jobs_run(rerun.stdout + rerun.stderr) == [("prepare_dataset", "dataset=shapes")]
    assert_same_outputs(results, reference)


def test_failed_job_is_retried_with_more_resources(tmp_path, reference):
    """A job killed on its first attempt runs again, asking for twice the memory and time, and succeeds."""
    results = tmp_path / "results"
    cfg = write_config(tmp_path, shapes_config(results))
    env = {"PYTHONPATH": str(FAULTS), "DIFFLENS_FAULT_SCRIPT": "prepare_dataset.py", "DIFFLENS_FAULT_TIMES": "1",
           "DIFFLENS_FAULT_COUNTER": str(tmp_path / "attempts")}
    proc = run(local([results / "data/shapes/dataset.json"], cfg, "--retries", "2"), env=env)
    out = proc.stdout + proc.stderr
    assert (tmp_path / "attempts").read_text() == "2"
    assert "died with <Signals.SIGKILL: 9>" in out and out.count("Trying to restart job") == 1
    first, second = [job.resources for job in printed_jobs(out) if job.rule == "prepare_dataset"]
    assert (int(first["mem_mb"]), int(first["runtime"])) == (4000, 60)
    assert (int(second["mem_mb"]), int(second["runtime"])) == (8000, 120)
    assert_same_outputs(results, reference)


def test_job_that_keeps_failing_stops_the_run_with_its_log(tmp_path):
    """A data set whose folder holds no images fails on every attempt: the run stops, naming the job's log."""
    empty = tmp_path / "my_images"
    empty.mkdir()
    results = tmp_path / "results"
    cfg = write_config(tmp_path, {"results": str(results),
                                  "datasets": {"mine": {"source": "imagefolder", "params": {"path": str(empty)}}}})
    proc = run(local([results / "data/mine/dataset.json"], cfg, "--retries", "1"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("Error in rule prepare_dataset") == 2 and out.count("Trying to restart job") == 1
    log = results / "logs/prepare_dataset/mine.log"
    assert f"log: {log} (check log file(s) for error details)" in out
    assert "has no class subfolders" in log.read_text()
    assert not (results / "data/mine/dataset.json").exists()


def test_changed_input_reruns_exactly_what_depends_on_it(tmp_path):
    """Two data sets, each planned into shards: a change to one reruns its own chain and nothing else."""
    results = tmp_path / "results"
    small = {"source": "shapes", "params": {"n_images": 40}}
    config = {"results": str(results), "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 60}},
                                                    "other": small}}
    cfg = write_config(tmp_path, config)
    targets = [results / f"latents/shapes/{d}/shards.json" for d in ("shapes", "other")]
    run(local(targets, cfg))

    # 1. the other data set's parameters change: it is rebuilt and replanned; the shapes world is not touched
    config["datasets"]["other"]["params"]["n_images"] = 41
    write_config(tmp_path, config)
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    proc = run(local(targets, cfg))
    assert sorted(jobs_run(proc.stdout + proc.stderr)) == [("plan_shards", "model=shapes, dataset=other"),
                                                           ("prepare_dataset", "dataset=other")]
    untouched = [p for p in before if "other" not in p.relative_to(results).as_posix()
                 and p.relative_to(results).as_posix() not in RUN_RECORD_FILES]  # every run writes those
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched)
    assert '"n_samples": 41' in (results / "latents/shapes/other/shards.json").read_text()

    # 2. the shapes data set is rewritten after the run with the same bytes: nothing runs (Snakemake compares the
    #    checksum of a small input whose time stamp changed); with other bytes, only the job that reads it runs
    meta = results / "data/shapes/dataset.json"
    meta.write_text(meta.read_text())
    proc = run(local(targets, cfg))
    assert jobs_run(proc.stdout + proc.stderr) == []
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=2) + "\n")
    proc = run(local(targets, cfg))
    assert jobs_run(proc.stdout + proc.stderr) == [("plan_shards", "model=shapes, dataset=shapes")]

    # 3. nothing changed: nothing runs
    proc = run(local(targets, cfg))
    assert jobs_run(proc.stdout + proc.stderr) == [] and "Nothing to be done" in proc.stdout + proc.stderr
