"""Deterministic DDIM sampling with classifier-free guidance, through the model layer (any text model)."""
from __future__ import annotations

import torch
from tqdm import tqdm


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
    n = model.num_train_timesteps
    ts = torch.linspace(n - 1, 0, steps).round().long()
    abar = model.alphas_cumprod.to(torch.float32)
    for i, t in enumerate(tqdm(ts, desc="DDIM", disable=not progress)):
        tt = torch.full((len(prompts),), int(t))
        eps = model.denoise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).cpu()
        eps_u, eps_c = eps.chunk(2)
        e = eps_u + guidance * (eps_c - eps_u)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x
