"""One GPU per GPU job on a multi-GPU workstation (difflens.devices), with stand-in devices: concurrent jobs claim
distinct devices, a job that ends (however it ends) frees its device, and a workflow run with --resources gpu=3
never has two running jobs on one device."""
import re
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest

from difflens import devices
from difflens.runlog import job_device
from workflows.runs import ROOT, run, snakemake_cmd, write_config

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from difflens.devices import claim_gpu
    ids, folder, release = sys.argv[1].split(","), Path(sys.argv[2]), Path(sys.argv[3])
    print(claim_gpu(ids, folder, poll_s=0.1), flush=True)
    while not release.exists():
        time.sleep(0.05)
""")


def holder(ids: str, folder: Path, release: Path) -> subprocess.Popen:
    """A process that claims a device of ``ids``, prints its index and holds it until ``release`` exists."""
    return subprocess.Popen([sys.executable, "-c", HOLDER, ids, str(folder), str(release)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT / "scripts")


def test_concurrent_jobs_claim_distinct_devices_and_a_waiting_one_gets_the_freed_device(tmp_path):
    locks, release = tmp_path / "locks", tmp_path / "release"
    first = [holder("a,b,c", locks, release) for _ in range(3)]
    got = [int(p.stdout.readline()) for p in first]
    assert sorted(got) == [0, 1, 2]
    fourth = holder("a,b,c", locks, tmp_path / "release-4th")
    time.sleep(1.0)
    assert fourth.poll() is None  # every device is held: it waits
    first[1].kill()  # a job killed without cleanup frees its device all the same
    first[1].wait()
    assert int(fourth.stdout.readline()) == got[1]
    assert "all 3 GPUs (a,b,c) are held by other difflens jobs" in fourth.stderr.readline()
    release.touch()
    (tmp_path / "release-4th").touch()
    for p in [*first, fourth]:
        p.wait(timeout=10)


@pytest.fixture
def own_claims(monkeypatch):
    """This test's claims, kept apart from the process's and released (their lock files closed) after it."""
    held = {}
    monkeypatch.setattr(devices, "_held", held)
    yield held
    for f in held.values():
        f.close()


def test_one_visible_device_needs_no_lock_and_a_second_claim_keeps_the_first(tmp_path, own_claims):
    assert devices.claim_gpu(["7"], tmp_path / "none") == 0 and not (tmp_path / "none").exists()
    first = devices.claim_gpu(["x", "y"], tmp_path / "locks")
    assert devices.claim_gpu(["x", "y"], tmp_path / "locks") == first
    assert (tmp_path / "locks" / f"gpu-{['x', 'y'][first]}.lock").read_text().strip().isdigit()


def test_job_device_with_stand_in_devices_claims_one_and_runs_on_the_cpu(tmp_path, monkeypatch, own_claims):
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "2")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    assert job_device({"gpu": 0}) == "cpu" and not own_claims  # no GPU given: no claim
    assert job_device({"gpu": 1}) == "cpu" and list(own_claims) in (["0"], ["1"])


def job_spans(results: Path, rule: str) -> list[tuple[str, float, float]]:
    """(device, start, end) of every job of ``rule``: the claim's log line, and the log's last write."""
    spans = []
    for log in sorted((results / "logs" / rule).rglob("*.log")):
        line = re.search(r"^(\S+ \S+) INFO difflens.devices: GPU job on device (\S+)", log.read_text(), flags=re.M)
        assert line, f"{log} has no device claim"
        start = datetime.strptime(line[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        spans.append((line[2], start, log.stat().st_mtime))
    return spans


def test_a_workstation_run_places_concurrent_gpu_jobs_on_distinct_devices(tmp_path):
    """Three encode jobs (4 threads each, 12 cores given), two stand-in GPUs and --resources gpu=2: jobs that
    overlap in time hold distinct devices, and both devices are used."""
    results = tmp_path / "results"
    cfg = write_config(tmp_path, {"results": str(results),
                                  "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 24}}},
                                  "extraction": {"shard_size": 8}})
    targets = [results / f"latents/shapes/shapes/shard-{i}.h5" for i in range(3)]
    run(snakemake_cmd(targets, cfg, "--profile", "profiles/local", "--cores", "12", "--resources=gpu=2"),
        env={devices.FAKE_GPUS_ENV: "2", devices.LOCK_DIR_ENV: str(tmp_path / "locks")})
    spans = job_spans(results, "encode_latents")
    assert len(spans) == 3 and {d for d, _, _ in spans} == {"0", "1"}
    for i, (dev, start, end) in enumerate(spans):
        for other, s, e in spans[i + 1:]:
            assert dev != other or e <= start or end <= s, f"two jobs on device {dev} at once: {spans}"
