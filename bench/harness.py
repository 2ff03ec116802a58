"""What every benchmark script shares: the library on sys.path, the device's name, waiting for its queue, and the
``--json`` file of measured numbers that bench/gpu_hours.py reads."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or 'CPU (2 threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: str | Path | None, numbers: dict) -> None:
    """Write a benchmark's measured ``numbers`` (nested dicts / lists of numbers and strings) to ``path`` (None:
    nothing). A NaN or infinite number is refused, naming its key: the GPU-hours arithmetic must not run on it."""
    if path is None:
        return

    def check(value, key):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"benchmark number {key} is {value}")
        for k, v in (value.items() if isinstance(value, dict) else enumerate(value)
                     if isinstance(value, list) else ()):
            check(v, f"{key}.{k}")

    check(numbers, "json")
    Path(path).write_text(json.dumps(numbers, indent=1) + "\n")
