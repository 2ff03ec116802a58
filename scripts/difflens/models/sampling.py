"""Deterministic DDIM sampling with classifier-free guidance, through the model layer (any text model).

Each update is diffusers' ``DDIMScheduler.step`` (eta 0). The model layer returns epsilon whatever the model was
trained to predict, so the sampling scheduler predicts epsilon.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from tqdm import tqdm


def sampling_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """The ``steps`` model timesteps visited, evenly spaced from ``T - 1`` down to 0 and rounded.

    Kept rather than diffusers' "linspace" spacing: that is the same grid computed in float64, which rounds the
    middle timestep of some odd step counts the other way (15 steps: 500 where this grid, in float32, has 499).
    """
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long()


def chain_scheduler(model, timesteps: torch.Tensor, clip_x0: float | None = None) -> DDIMScheduler:
    """A DDIMScheduler over the sub-chain of ``timesteps`` (descending): its timestep ``j`` is ``timesteps[-1 - j]``,
    with the alpha_bar the model's scheduler gives that timestep, so its step from ``j`` to ``j - 1`` is DDIM from
    one grid timestep to the next (and from the last to alpha_bar = 1). Predicts epsilon, clips x0 estimates to
    ``[-clip_x0, clip_x0]`` when given.

    Why not the model's schedule with ``set_timesteps``: ``DDIMScheduler.step`` takes the previous timestep to be
    ``t - T // steps`` whatever the spacing, which is not the next timestep of this grid (T = 1000, 10 steps:
    999, 888, ... but ``step`` goes from 999 to 899; diffusers issue #12633, open in 0.42). DDIM on a sub-sequence
    of timesteps is DDIM on the chain of their alpha_bars (Song et al. 2021, sec. 4.2): this scheduler's table.
    """
    scheduler = DDIMScheduler(num_train_timesteps=len(timesteps), prediction_type="epsilon",
                              clip_sample=clip_x0 is not None,
                              clip_sample_range=1.0 if clip_x0 is None else float(clip_x0), set_alpha_to_one=True)
    # the table is set, not passed as trained_betas: the chain's betas 1 - abar_t / abar_prev are close to 1 at high
    # noise, and the scheduler rounds betas to float32, which would cost the smallest alpha_bars up to 1e-3
    scheduler.alphas_cumprod = model.alphas_cumprod.to(torch.float32)[timesteps.flip(0)]
    scheduler.set_timesteps(len(timesteps))
    return scheduler


def ddim_sample(model, prompts: list[str], latent_shape: tuple[int, ...], *, steps: int = 50, guidance: float = 3.0,
                seed: int = 0, clip_x0: float | None = None, progress: bool = False) -> torch.Tensor:
    """Latents (B, *latent_shape) generated for ``prompts`` (eta = 0, guidance w: eps_u + w (eps_c - eps_u)).

    ``clip_x0``: clamp each step's x0 estimate to [-clip_x0, clip_x0] and re-derive the noise from it (DDIM's
    ``clip_sample``; for models whose latents have a known range, such as pixel models in [-1, 1]).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), *latent_shape), generator=gen)
    cond = model.encode_text(list(prompts))
    uncond = model.encode_text([""] * len(prompts))
    timesteps = sampling_timesteps(model.num_train_timesteps, steps)
    scheduler = chain_scheduler(model, timesteps, clip_x0)
    for t, j in zip(tqdm(timesteps, desc="DDIM", disable=not progress), scheduler.timesteps):
        tt = torch.full((len(prompts),), int(t))
        eps = model.denoise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).cpu()
        eps_u, eps_c = eps.chunk(2)
        e = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(e, int(j), x, eta=0.0, use_clipped_model_output=clip_x0 is not None).prev_sample
    return x
