"""The probability-flow ODE of a text model, and cross-attention traced along it.

The ODE is solved in ``xbar = x_t / sqrt(abar_t)`` against ``sigma_t = sqrt(1 / abar_t - 1)``, where
``d xbar / d sigma = eps_hat(x_t, t | prompt)``: an Euler step is exactly a DDIM step (eta 0), and ``heun`` adds the
second-order correction. No guidance: inverting an image under its caption and regenerating under the same caption
reconstructs it.

``regeneration_attention`` is the DAAM baseline of Kong et al.'s Table 3 ("Attention"): invert the real image under
its caption, regenerate it under the caption while recording cross-attention, and aggregate the sums over the
regeneration's steps as DAAM does (``daam_map``).
"""
from __future__ import annotations

import torch

from ..models.attention import aggregate_maps, record_cross_attention
from ..models.sampling import sampling_timesteps
from .estimators import denoise_rows

SOLVERS = ("ddim", "heun")


def daam_map(layer_maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(B, T, H, W) token maps from per-layer (B, T, h, w) recorded sums: lowest resolution dropped (unless it is
    the only one), bicubic to ``size``, clamped at 0, mean over layers (DAAM's aggregation)."""
    return aggregate_maps(layer_maps, size, mode="bicubic", drop_lowest=True, clamp=True)


def ode_grid(model, steps: int) -> torch.Tensor:
    """The ``steps + 1`` timesteps of an inversion, increasing from 0 to T - 1 (flip it to regenerate)."""
    return sampling_timesteps(model.num_train_timesteps, steps + 1).flip(0)


def ode_path(model, x: torch.Tensor, prompts: list[str], timesteps: torch.Tensor, solver: str = "ddim",
             batch_size: int = 256, recorder=None, slots: torch.Tensor | None = None,
             guidance: float = 1.0) -> torch.Tensor:
    """Carry latents ``x`` (B, C, h, w), given at ``timesteps[0]``, to ``timesteps[-1]`` along the ODE under
    ``prompts`` (one per row). Increasing timesteps invert (image -> noise), decreasing ones generate. A clean image
    enters (and leaves) at timestep 0, whose noise level (sigma about 0.01) is the path's end. With a cross-attention
    ``recorder`` (``record_cross_attention(model, n_slots=...)``), row ``i``'s attention at every denoiser call of
    the path is summed into slot ``slots[i]`` (-1: not recorded). ``guidance`` other than 1 follows classifier-free
    guidance, ``eps(empty) + guidance * (eps(prompt) - eps(empty))`` (the recorder sees the prompt's calls only)."""
    if solver not in SOLVERS:
        raise ValueError(f"intervention solver {solver!r} is not one of {list(SOLVERS)}")
    abar = model.alphas_cumprod.to(torch.float64)
    cond = model.encode_text(prompts)
    empty = model.encode_text([""] * len(prompts)) if guidance != 1 else None

    def eps(xbar, t):
        a = float(abar[int(t)])
        x_t = (xbar * a ** 0.5).float()
        tt = torch.full((len(x_t),), int(t), dtype=torch.long)
        out = denoise_rows(model, x_t, tt, cond, batch_size, recorder, slots).double()
        if empty is None:
            return out
        free = denoise_rows(model, x_t, tt, empty, batch_size).double()
        return free + guidance * (out - free)

    sigma = lambda t: float((1 / abar[int(t)] - 1) ** 0.5)  # noqa: E731
    xbar = x.double() / float(abar[int(timesteps[0])]) ** 0.5
    for t0, t1 in zip(timesteps[:-1], timesteps[1:]):
        d = sigma(t1) - sigma(t0)
        e0 = eps(xbar, t0)
        nxt = xbar + d * e0
        if solver == "heun":
            nxt = xbar + d * (e0 + eps(nxt, t1)) / 2
        xbar = nxt
    return (xbar * float(abar[int(timesteps[-1])]) ** 0.5).float()


def regeneration_attention(model, x0: torch.Tensor, captions: list[str], *, steps: int, solver: str = "ddim",
                           batch_size: int = 256) -> torch.Tensor:
    """DAAM token maps (B, n_tokens, h, w) on the latent grid of images ``x0`` (B, C, h, w): each inverted under its
    caption along ``steps`` ODE steps, then regenerated under it with every cross-attention call of the
    regeneration summed per image (``daam_map``)."""
    grid = ode_grid(model, steps)
    noise = ode_path(model, x0, captions, grid, solver, batch_size)
    with record_cross_attention(model, n_slots=len(x0)) as rec:
        ode_path(model, noise, captions, grid.flip(0), solver, batch_size, rec, torch.arange(len(x0)))
    return daam_map(rec.maps, tuple(x0.shape[-2:]))
