"""Generation under an SAE edit, along the information stage's probability-flow ODE (``info.ode``).

Two starting points (``SOURCES``): ``inverted``, a real image carried to noise along the ODE under the prompt (the
intervention stage's inversion), and ``noise``, seeded Gaussian noise (``extract.noise.sample_noise`` keyed by the
image's sample id at timestep T - 1, so each image of the data set has its own draw). From there the ODE runs back to
timestep 0 twice under the same prompt: once unedited (for an inverted image, its reconstruction) and once with the
spliced SAE's edit active at the steps whose timestep lies in the configured range; the effect of an edit is always
measured against the unedited regeneration from the same start.

An ODE step from ``t0`` to ``t1`` reads the denoiser at ``t0`` (and at ``t1`` for Heun's correction), so the edit is
on for the steps whose ``t0`` is in the range. No guidance by default (the inversion then reconstructs the image);
``guidance`` above 1 is classifier-free guidance for both the unedited and the edited regeneration.
"""
from __future__ import annotations

import torch

from ..extract.noise import sample_noise
from ..info.ode import ode_grid, ode_path

SOURCES = ("inverted", "noise")


def segments(grid: torch.Tensor, t_range: tuple[int, int]) -> list[tuple[int, int, bool]]:
    """(first index, last index, edit on) of the runs of consecutive steps of a decreasing ``grid`` whose first
    timestep is (or is not) within ``t_range`` (inclusive)."""
    lo, hi = t_range
    on = [lo <= int(t) <= hi for t in grid[:-1]]
    out, start = [], 0
    for k in range(1, len(on) + 1):
        if k == len(on) or on[k] != on[start]:
            out.append((start, k, on[start]))
            start = k
    return out


def regenerate(model, x_start: torch.Tensor, prompts: list[str], grid: torch.Tensor, *, splice=None,
               t_range: tuple[int, int] = (0, 10 ** 9), solver: str = "ddim", batch_size: int = 256,
               guidance: float = 1.0) -> torch.Tensor:
    """Latents at timestep 0 from ``x_start`` (B, C, h, w) at ``grid[0]`` along the decreasing ``grid``; with a
    ``splice`` (``splice.spliced``), its edit is active on the steps that ``segments`` marks."""
    x = x_start
    for a, b, on in segments(grid, t_range):
        if splice is not None:
            splice.active = on
        x = ode_path(model, x, prompts, grid[a:b + 1], solver, batch_size, guidance=guidance)
    if splice is not None:
        splice.active = True
    return x


def starting_points(model, source: str, x0: torch.Tensor | None, ids: list[str], prompts: list[str], *,
                    steps: int, seed: int, solver: str = "ddim",
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(start latents at the grid's first timestep, the decreasing ODE grid) for ``source``: the ODE inversion of
    the image latents ``x0`` under ``prompts``, or seeded noise per sample id."""
    grid = ode_grid(model, steps)
    if source == "inverted":
        start = ode_path(model, x0, prompts, grid, solver, batch_size)  # unguided: it inverts the image
    elif source == "noise":
        shape = tuple(x0.shape[1:])
        start = sample_noise(shape, seed, ids, int(grid[-1]), 0)
    else:
        raise ValueError(f"steer.sources: {source!r} is not one of {list(SOURCES)}")
    return start, grid.flip(0)
