"""Seeded noise, prompts and out-of-memory-tolerant batching shared by the extraction steps.

Noise for (sample id, timestep, draw) comes from a generator seeded by a hash of ``(seed, sample id, timestep,
draw)``, drawn on the CPU in float32, so features never depend on batch size, shard size, order or device. The
information estimators use the same scheme (``difflens.seeding.derive_seed(seed, "info", item id, draw)``).
"""
from __future__ import annotations

import logging

import torch

from ..seeding import derive_seed

log = logging.getLogger(__name__)


def noise_seed(seed: int, sample_id: str, timestep: int, draw: int) -> int:
    """A 63-bit generator seed that depends only on (seed, sample id, timestep, draw)."""
    return derive_seed(int(seed), sample_id, int(timestep), int(draw))


def sample_noise(shape: tuple[int, ...], seed: int, sample_ids, timestep: int, draw: int) -> torch.Tensor:
    """Standard normal noise (B, *shape), float32 on the CPU, row b seeded by (seed, sample_ids[b], timestep, draw)."""
    gen = torch.Generator()
    out = torch.empty((len(sample_ids), *shape))
    for b, sid in enumerate(sample_ids):
        gen.manual_seed(noise_seed(seed, sid, timestep, draw))
        out[b] = torch.randn(shape, generator=gen)
    return out


# ---- batching -----------------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class HalvingBatcher:
    """Runs ``fn(a, b)`` over ``[0, n)`` in slices of at most ``size``; an out-of-memory error halves ``size``
    (for the rest of the run) and retries the slice. Fails only if a single item does not fit."""

    def __init__(self, size: int, what: str = "batch"):
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.size, self.what = int(size), what

    def run(self, n: int, fn) -> list:
        out, a = [], 0
        while a < n:
            b = min(n, a + self.size)
            try:
                out.append(fn(a, b))
                a = b
                continue
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not _is_oom(exc) or b - a == 1:
                    raise
            # outside the except block, so the traceback (and the tensors its frames hold) is already freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.size = max(1, (b - a) // 2)
            log.warning("out of memory at %d %s; continuing with %d", b - a, self.what, self.size)
        return out
