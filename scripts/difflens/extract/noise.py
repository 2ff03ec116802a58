"""Seeded noise shared by the extraction steps (their out-of-memory-tolerant batching: ``models.batching``).

Noise for (sample id, timestep, draw) comes from a generator seeded by a hash of ``(seed, sample id, timestep,
draw)``, drawn on the CPU in float32, so features never depend on batch size, shard size, order or device. The
information estimators use the same scheme (``difflens.seeding.derive_seed(seed, "info", item id, draw)``).
"""
from __future__ import annotations

import torch

from ..seeding import derive_seed


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
