"""The workflow on a real SLURM cluster: `make test-slurm` starts one on this host (tests/slurm) and runs this file.

A slice of the shapes-world DAG (``SLICE``) runs with profiles/slurm plus the test cluster's overlay
(tests/slurm/profile), and its training job is cancelled half way (scancel): every job must have been a SLURM job,
the cancelled one resubmitted with more memory, and the outputs must equal a local run's.

Skipped unless DIFFLENS_SLURM=1 and slurmctld is installed; with both, a cluster that does not answer is a failure.
"""
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from workflow_utils import tiny_overlay
from workflows.runs import assert_same_outputs, printed_jobs, run, snakemake_cmd, write_config

pytestmark = [
    pytest.mark.skipif(os.environ.get("DIFFLENS_SLURM") != "1",
                       reason="real-SLURM test: run `make test-slurm` (root; starts a one-node cluster) "
                              "or set DIFFLENS_SLURM=1 with a cluster from tests/slurm/start_slurm.sh"),
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="real-SLURM test: slurmctld is not installed (tests/slurm/install_slurm.sh)"),
]

#: the slice of the DAG run on the cluster, as targets under results; a stage that lands adds its line here
SLICE = [
    "data/shapes/dataset.json",
    "models/shapes/trained/difflens_model.json",
    "latents/shapes/shapes/skipped.csv",  # every latent shard
    "activations/shapes/shapes/index.json",  # every activation shard
]
#: rules the slice runs on the login node (the Snakefiles' localrules)
LOCAL_RULES = {"plan_shards", "collect_skipped", "index_activations"}
SLURM_DIR = Path(os.environ.get("DIFFLENS_SLURM_DIR", "/tmp/difflens-slurm"))
TIMEOUT = 900


def slice_config(results: Path) -> dict:
    """The tiny shapes world, in 2 shards and at one timestep: SLURM job arrays of 2 tasks for both extraction rules."""
    cfg = tiny_overlay(results, extraction={"shard_size": 32})
    cfg["models"]["shapes"]["timesteps"] = [25]
    return cfg


def on_slurm(targets, cfg, logdir: Path, *options):
    return snakemake_cmd(targets, cfg, "--profile", "profiles/slurm", "--workflow-profile", "tests/slurm/profile",
                         "--slurm-logdir", str(logdir), *options)


def slurm(*args) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module", autouse=True)
def cluster():
    os.environ.setdefault("SLURM_CONF", str(SLURM_DIR / "slurm.conf"))
    try:
        slurm("scontrol", "ping")
        nodes = slurm("sinfo", "--noheader", "--Node", "--format=%N %T")
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"no SLURM controller answers with SLURM_CONF={os.environ['SLURM_CONF']} "
                    f"(start one with tests/slurm/start_slurm.sh): {exc}")
    assert " idle" in nodes, f"no idle node: {nodes}"


class Background(threading.Thread):
    """A command run by ``run`` in a thread; ``result()`` waits for it and re-raises its failure."""

    def __init__(self, cmd):
        super().__init__(daemon=True)
        self.cmd, self.error = cmd, None

    def run(self):
        try:
            run(self.cmd, timeout=TIMEOUT)
        except BaseException as exc:  # handed to the test that waits for it
            self.error = exc

    def result(self):
        self.join(TIMEOUT)
        assert not self.is_alive(), f"still running after {TIMEOUT} s: {' '.join(self.cmd)}"
        if self.error:
            raise self.error


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The slice run locally, with the threads the cluster's jobs get (the overlay's max-threads: 1). It runs while
    the cluster's run waits on its jobs, so it costs the test little time."""
    tmp = tmp_path_factory.mktemp("local")
    results = tmp / "results"
    cfg = write_config(tmp, slice_config(results))
    job = Background(snakemake_cmd([results / t for t in SLICE], cfg, "--profile", "profiles/local", "--cores", "2",
                                   "--max-threads", "1"))
    job.start()
    yield job, results
    job.join(TIMEOUT)


def cancel_once(rule: str, started: Path, cancelled: list, stop: threading.Event) -> None:
    """scancel the first SLURM job of ``rule`` seen running once its script has begun (written ``started``)."""
    while not stop.is_set():
        for line in slurm("squeue", "--noheader", "--format=%i|%T|%k").split():
            jobid, state, comment = line.split("|")
            if comment.startswith(f"rule_{rule}") and state == "RUNNING" and started.exists():
                slurm("scancel", jobid)
                cancelled.append(jobid)
                return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, local_run):
    """The slice on the cluster (the local run started first); its training job is cancelled once, half way."""
    tmp = tmp_path_factory.mktemp("slurm")
    results = tmp / "results"
    cfg = write_config(tmp, slice_config(results))
    cancelled, stop = [], threading.Event()
    watcher = threading.Thread(target=cancel_once, daemon=True, args=(
        "train_shapes_model", results / "logs/train_shapes_model/shapes.log", cancelled, stop))
    watcher.start()
    start = time.monotonic()
    try:
        proc = run(on_slurm([results / t for t in SLICE], cfg, tmp / "slurm_logs"), timeout=TIMEOUT)
    finally:
        stop.set()
        watcher.join(timeout=10)
    print(f"\nSLURM slice wall time: {time.monotonic() - start:.0f} s")
    return results, tmp / "slurm_logs", proc.stdout + proc.stderr, cancelled


def submitted(output: str) -> dict[str, list[str]]:
    """{SLURM job id: [Snakemake job ids]} of every sbatch submission the run reported (arrays included)."""
    jobs = {m[2]: [m[1]] for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)}
    for m in re.finditer(r"Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)", output):
        jobs[m[2]] = m[1].split(",")
    return jobs


def test_every_job_of_the_slice_ran_as_a_slurm_job(slurm_run):
    results, logdir, output, cancelled = slurm_run
    jobs = submitted(output)
    # every Snakemake job that ran was submitted, but for the local rules (plan_shards, collect_skipped, ...)
    printed = printed_jobs(output)
    remote = {job.jobid for job in printed if not job.local}
    assert remote and remote == {j for ids in jobs.values() for j in ids}
    assert {job.rule for job in printed if job.local} <= LOCAL_RULES
    assert any(len(ids) > 1 for ids in jobs.values()), "no job array was submitted"
    # SLURM knows each of them as a job of this run, completed but for the one cancelled, with its own log file
    states = dict(line.split("|") for line in slurm("squeue", "--states=all", "--noheader", "--format=%i|%T",
                                                     "--jobs", ",".join(jobs)).split())
    for slurm_id, ids in jobs.items():
        tasks = [k for k in states if k == slurm_id or k.startswith(f"{slurm_id}_")]
        want = "CANCELLED" if slurm_id in cancelled else "COMPLETED"
        assert len(tasks) == len(ids) and all(states[k] == want for k in tasks), (slurm_id, states)
    logs = list(logdir.rglob("*.log"))
    for slurm_id in jobs:
        assert any(p.stem.split("_")[0] == slurm_id for p in logs), f"no SLURM log of job {slurm_id} in {logdir}"


def test_cancelled_job_was_resubmitted_with_more_memory(slurm_run):
    _, _, output, cancelled = slurm_run
    assert cancelled, "the training job was never seen running"
    assert f"SLURM-job '{cancelled[0]}' failed, SLURM status is: 'CANCELLED'" in output
    assert output.count("Trying to restart job") == 1
    memory = [job.resources["mem_mb"] for job in printed_jobs(output) if job.rule == "train_shapes_model"]
    assert memory == ["8000", "16000"]


def test_slice_outputs_equal_a_local_run(slurm_run, local_run):
    job, local_results = local_run
    job.result()
    assert_same_outputs(slurm_run[0], local_results)
