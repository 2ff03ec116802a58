"""One GPU per GPU job on a machine with several: each job that may use a GPU claims a visible device that no other
difflens job on the machine holds, through a lock file per device that it keeps until it exits (the system releases
it when the process ends, however it ends). Snakemake's ``--resources gpu=<n>`` caps how many GPU jobs run at once;
this places them. A job that sees one device (a SLURM job sees only its own) takes it without a lock.

``DIFFLENS_GPU_LOCKS`` names the lock folder (default ``<tmp>/difflens-gpus-<uid>``, shared by every run of this
user on the machine); ``DIFFLENS_FAKE_GPUS=<n>`` stands in n devices for tests: the claim is made and logged, and the
job runs on the CPU.
"""
from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "DIFFLENS_GPU_LOCKS"
FAKE_GPUS_ENV = "DIFFLENS_FAKE_GPUS"
#: the open lock file of each device this process holds (closing it would release the device)
_held: dict[str, object] = {}


def fake_gpus() -> int:
    """The number of stand-in devices (DIFFLENS_FAKE_GPUS), 0 when none."""
    return int(os.environ.get(FAKE_GPUS_ENV) or 0)


def visible_gpus() -> list[str]:
    """The ids of the devices this process may use: the CUDA_VISIBLE_DEVICES entries (or 0..n-1) of the n devices
    torch sees, or the stand-ins of DIFFLENS_FAKE_GPUS."""
    if fake_gpus():
        return [str(i) for i in range(fake_gpus())]
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given[:n] if len(given) >= n else [str(i) for i in range(n)]


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"difflens-gpus-{os.getuid()}")


def _try_lock(path: Path):
    """The open file of ``path`` locked exclusively, or None when another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def claim_gpu(ids: list[str], folder: Path | None = None, poll_s: float = 2.0) -> int:
    """The index in ``ids`` of a device that no other process holds, locked for this process's life (the same one
    on a second call). One id: 0, with no lock. All held: waits, with one warning naming the cause."""
    if len(ids) <= 1:
        return 0
    for i, dev in enumerate(ids):
        if dev in _held:
            return i
    folder = folder or lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    warned = False
    while True:
        for i, dev in enumerate(ids):
            f = _try_lock(folder / f"gpu-{dev}.lock")
            if f is not None:
                _held[dev] = f
                return i
        if not warned:
            log.warning("all %d GPUs (%s) are held by other difflens jobs (locks in %s); waiting for one. Give "
                        "snakemake --resources gpu=<number of GPUs> so that no more GPU jobs start than there are "
                        "GPUs", len(ids), ",".join(ids), folder)
            warned = True
        time.sleep(poll_s)


def gpu_for_job() -> str | None:
    """The device of a job that may use a GPU: ``cuda:<i>`` of the device it claimed where it sees several, the
    CPU where they are stand-ins, None where it sees one or none (the caller's default)."""
    ids = visible_gpus()
    if len(ids) <= 1:
        return None
    i = claim_gpu(ids)
    log.info("GPU job on device %s (cuda:%d of %d visible; locks in %s)%s", ids[i], i, len(ids), lock_dir(),
             ": a stand-in, so the job runs on the CPU" if fake_gpus() else "")
    if fake_gpus():
        return "cpu"
    import torch

    torch.cuda.set_device(i)
    return f"cuda:{i}"
