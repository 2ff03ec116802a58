"""One denoiser batch of images x timesteps x noise draws -> the pooled vectors (and maps) of the requested layers.

Shared by extraction and by the stages that compute features on the fly (so both see exactly the same noise: see
``difflens.extract.noise``) without going through the HDF5 writers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .noise import sample_noise


class Captured(NamedTuple):
    pooled: torch.Tensor  # (T, b, C) float32, CPU
    maps: torch.Tensor | None  # (T, b, C, H, W) float16, CPU
    shape: tuple[int, ...]  # (C, H, W) of one map


def capture_rows(model, x0: torch.Tensor, ids: list[str], cond: torch.Tensor, timesteps: list[int], draws: int,
                  layers: list[str], seed: int, save_maps: bool) -> dict[str, Captured]:
    """One denoiser batch of len(ids) x len(timesteps) x draws rows -> per layer, pooled (and map) per timestep.

    Rows are ordered timestep-major, then draw, then image; draws are averaged.
    """
    b, n_t = len(ids), len(timesteps)
    noise = torch.cat([sample_noise(tuple(x0.shape[1:]), seed, ids, t, d) for t in timesteps for d in range(draws)])
    t_rows = torch.tensor(timesteps, dtype=torch.long).repeat_interleave(draws * b)
    x0_rows = x0.repeat(n_t * draws, *[1] * (x0.dim() - 1))
    x_t = model.add_noise(x0_rows, noise.to(x0.device), t_rows.to(x0.device))
    cond_rows = cond.repeat(n_t * draws, *[1] * (cond.dim() - 1))
    with torch.inference_mode():
        got = model.capture(x_t, t_rows, cond_rows, layers)
        out = {}
        for name, m in got.items():
            pooled = m.mean(dim=(-2, -1), dtype=torch.float32).view(n_t, draws, b, -1).mean(1)
            maps = None
            if save_maps:
                m = m.reshape(n_t, draws, b, *m.shape[1:])
                maps = (m[:, 0] if draws == 1 else m.float().mean(1)).to(torch.float16).cpu()
            out[name] = Captured(pooled.cpu(), maps, tuple(m.shape[-3:]))
    return out
