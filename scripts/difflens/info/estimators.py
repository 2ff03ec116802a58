"""Information-theoretic scores from denoising errors (Kong et al., ICLR 2024).

For an image x (model latents) and prompts y_1..y_m, with the unconditional denoiser given by the empty prompt:

* ``mmse(y)``  = E_a,eps ||eps - eps_hat(x_a | y)||^2 (weighted like the integrals below)
* ``i_s(x; y)`` = 1/2 Int E_eps[ ||eps - eps_hat(x_a)||^2 - ||eps - eps_hat(x_a | y)||^2 ] da
* ``i_o(x; y)`` = 1/2 Int E_eps[ ||eps_hat(x_a) - eps_hat(x_a | y)||^2 ] da

The integral over log-SNR ``a`` is estimated by importance sampling from a logistic(loc, scale) truncated to
``loc +- clip * scale`` with weight ``w(a) = scale * tanh(clip / 2) / (sigmoid(u) sigmoid(-u))``,
``u = (a - loc) / scale``. Every prompt of one image shares the same (a, eps) draws; results are in nats.
Draws are seeded per (seed, sample index), so scores do not depend on batch size or order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LogSNRSampler:
    """Truncated-logistic proposal of log-SNR values and their importance weights."""

    loc: float = 1.0
    scale: float = 2.0
    clip: float = 3.0

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.sigmoid(torch.tensor(-self.clip)), torch.sigmoid(torch.tensor(self.clip))
        p = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        u = torch.log(p) - torch.log1p(-p)
        return self.loc + self.scale * u, self.weight(self.loc + self.scale * u)

    def weight(self, a: torch.Tensor) -> torch.Tensor:
        u = (a - self.loc) / self.scale
        return self.scale * np.tanh(self.clip / 2) / (torch.sigmoid(u) * torch.sigmoid(-u))


@dataclass
class Scores:
    """Per image (rows) and prompt (columns) estimates, nats; ``*_se`` are standard errors over draws."""

    i_s: np.ndarray
    i_o: np.ndarray
    mmse: np.ndarray
    i_s_se: np.ndarray
    i_o_se: np.ndarray


def image_scores(model, latents: torch.Tensor, prompts: list[str], n_draws: int, sampler: LogSNRSampler,
                 generator: torch.Generator, batch_size: int = 256, pixelwise: bool = False):
    """Estimates for one image (latents (C, h, w)) and its prompts; returns per-draw weighted integrands.

    Returns ``(f_s, f_o, err)`` of shape (n_draws, m) — or (n_draws, m, h, w) with ``pixelwise`` (squared error
    summed over channels only) — already multiplied by 1/2 w(a), so a mean over draws is the estimate.
    """
    a, w = sampler.draw(n_draws, generator)
    eps = torch.randn((n_draws, *latents.shape), generator=generator)
    x_a = model.add_noise_logsnr(latents[None].expand(n_draws, *latents.shape), eps, a)
    t = model.timestep_for_logsnr(a)
    all_prompts = [""] + list(prompts)
    cond = model.encode_text(all_prompts)
    m1 = len(all_prompts)
    # one batch row per (draw, prompt); chunked to bound memory
    rows_x = x_a.repeat_interleave(m1, dim=0)
    rows_t = t.repeat_interleave(m1)
    rows_c = cond.repeat(n_draws, *[1] * (cond.dim() - 1))
    outs = [model.denoise(rows_x[i:i + batch_size], rows_t[i:i + batch_size], rows_c[i:i + batch_size]).cpu()
            for i in range(0, len(rows_x), batch_size)]
    eps_hat = torch.cat(outs).view(n_draws, m1, *latents.shape)
    reduce = (lambda z: z.sum(dim=2)) if pixelwise else (lambda z: z.flatten(2).sum(dim=2))
    err = reduce((eps[:, None] - eps_hat) ** 2)  # (n, m1[, h, w])
    gap = reduce((eps_hat[:, :1] - eps_hat[:, 1:]) ** 2)
    half_w = (0.5 * w).to(torch.float32).view(-1, *[1] * (err.dim() - 1))
    return half_w * (err[:, :1] - err[:, 1:]), half_w * gap, half_w * err[:, 1:]


def information_scores(model, latents: torch.Tensor, prompts: list[list[str]], *, n_draws: int = 100,
                       sampler: LogSNRSampler = LogSNRSampler(), seed: int = 0, sample_keys: list[int] | None = None,
                       batch_size: int = 256, progress: bool = False) -> Scores:
    """i^s, i^o and weighted MMSE for each image (latents (B, C, h, w)) and each of its prompts (B lists of m).

    ``sample_keys`` (default 0..B-1) seed each image's draws, so any subset or order gives the same numbers.
    """
    from tqdm import tqdm

    keys = range(len(latents)) if sample_keys is None else sample_keys
    res = {k: [] for k in ("s", "o", "e", "s_se", "o_se")}
    for x, ps, key in tqdm(list(zip(latents, prompts, keys)), desc="information scores", disable=not progress):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
        f_s, f_o, e = image_scores(model, x.float(), ps, n_draws, sampler, gen, batch_size)
        res["s"].append(f_s.mean(0))
        res["o"].append(f_o.mean(0))
        res["e"].append(e.mean(0))
        res["s_se"].append(f_s.std(0) / n_draws ** 0.5)
        res["o_se"].append(f_o.std(0) / n_draws ** 0.5)
    stack = {k: torch.stack(v).numpy() for k, v in res.items()}
    return Scores(i_s=stack["s"], i_o=stack["o"], mmse=stack["e"], i_s_se=stack["s_se"], i_o_se=stack["o_se"])
