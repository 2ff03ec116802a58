"""Logging set-up shared by the rule scripts: everything (logging, warnings, tracebacks) goes to the rule's log."""
from __future__ import annotations

import logging
import sys
from pathlib import Path


def start_log(path: str | Path, level: int = logging.INFO) -> logging.Logger:
    """Send stderr (tqdm bars, warnings, uncaught tracebacks) and the logging module to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    sys.stderr = stream
    logging.basicConfig(level=level, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("difflens")


def throughput_line(n_images: int, seconds: float, device=None) -> str:
    """The last line of a GPU job's log: images/s, the device's name and the peak memory of the job."""
    import platform
    import resource

    rate = n_images / seconds if seconds > 0 else float("nan")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux -> GiB
    name, gpu_peak = f"CPU ({platform.processor() or platform.machine()})", ""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        gpu_peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB"
    return (f"{n_images} images in {seconds:.1f} s = {rate:.2f} images/s on {name}{gpu_peak}, "
            f"peak host memory {peak_rss:.2f} GiB")


def job_device(resources) -> str | None:
    """The device a rule script should use: "cpu" when Snakemake gave the job no GPU (its ``gpu`` resource is 0, as
    with ``--resources gpu=0`` or the local profile's ``gpu: 0``); where the job sees several GPUs, the one it
    claimed that no other difflens job holds (difflens.devices); else None (the one visible GPU, or the CPU)."""
    gpus = getattr(resources, "gpu", None) if not isinstance(resources, dict) else resources.get("gpu")
    if gpus is not None and int(gpus) == 0:
        return "cpu"
    from .devices import gpu_for_job

    return gpu_for_job()
