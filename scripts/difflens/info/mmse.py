"""MMSE curves (Kong et al., ICLR 2024, appendix): the denoising error of each image against log-SNR, under its
caption and under the empty prompt (the unconditional branch), beside a Gaussian reference.

Every quantity is in the estimators' units (``estimators.mmse_curve``): ``E ||eps - eps_hat(x_a | prompt)||^2``
summed over the latent's elements, the noise-prediction (eps) error. In these units the curve rises with log-SNR,
from 0 (pure noise: the noisy input is its own noise) towards the number of latent elements ``d``; the error of
the clean image, ``mmse_x = e^-a mmse_eps``, is the one that falls. Half the area between the empty prompt's curve
and the caption's is the image's i^s mutual information with its caption (``curve_information``: the trapezoid
rule over the curve's levels, so only the part of the integral inside the model's trained range).

**Levels.** ``n_levels`` log-SNRs evenly spaced over the model's trained range (``model.log_snr``), each moved to
its nearest timestep (where the image is noised and denoised); levels that share a timestep are kept once.

**Draws.** Image ``k`` takes its noise at level ``i`` from ``derive_seed(derive_seed(seed, "mmse-curve",
sample_id), "mmse", 0, i)`` (``mmse_curve`` on one image): the caption and the empty prompt see the same noise
(their difference has no noise of its own beyond the denoiser's response), and a curve never depends on the other
images of the job.

**Gaussian reference.** ``sum_i sigmoid(a + log v_i)`` with ``v_i`` the variance of latent element ``i`` over the
reference images: the eps-error of the best per-element linear (Wiener) denoiser, which is the MMSE of a Gaussian
with those variances (``sigmoid(a)`` per element for unit variance: the reference of Kong et al.'s likelihood
identity). No denoiser of data with these variances does worse at its optimum, so the optimal curve of the data
lies below it at every level; a learned curve above it shows where the model falls short of a linear denoiser.
The variances need many images: estimated from a few, an element that is background in all of them has variance 0
and the reference falls below the true bound (``infodecomp.mmse.reference_images``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..seeding import derive_seed
from .estimators import mmse_curve
from .inputs import split_names

#: the columns of mmse_curves.csv (long format: one row per image, prompt kind and level)
COLUMNS = ["sample_id", "prompt", "timestep", "logsnr", "mmse", "gaussian"]
#: the prompt kinds of a curve: the image's caption and the empty prompt
PROMPTS = ("caption", "empty")


def curve_levels(model, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps, their log-SNRs (float64)) of ``n_levels`` log-SNRs evenly spaced over the model's trained range,
    each at its nearest timestep, distinct, in increasing log-SNR."""
    if n_levels < 2:
        raise ValueError(f"infodecomp.mmse.n_levels = {n_levels}: a curve needs at least 2 levels")
    snr = model.log_snr.to(torch.float64)
    grid = torch.linspace(float(snr.min()), float(snr.max()), n_levels, dtype=torch.float64)
    t = torch.unique(model.timestep_for_logsnr(grid))
    t = t[torch.argsort(snr[t])]
    return t, snr[t]


def curve_images(ds, split: str, max_images: int) -> pd.DataFrame:
    """(sample_id, caption) of the images of ``split`` (``all``: every split) with a caption, in samples.csv order:
    the first ``max_images`` (0 = all)."""
    rows = ds.samples[ds.samples["split"].isin(split_names(split))]
    rows = rows[rows["caption"].astype(str).str.strip() != ""]
    if rows.empty:
        raise ValueError(f"data set {ds.name!r}: no captioned image on split {split!r} (infodecomp.mmse.split): "
                         f"an MMSE curve under the caption needs one")
    rows = rows.head(max_images) if max_images else rows
    return rows[["sample_id", "caption"]].astype(str).reset_index(drop=True)


def latent_variance(model, ds, sample_ids: list[str], batch_size: int = 16) -> torch.Tensor:
    """Per-element variance (float64, (C, h, w), ddof 1) of the images' latents, accumulated batch by batch (the
    images' latents are never held together)."""
    from .inputs import encode_samples

    if len(sample_ids) < 2:
        raise ValueError(f"a latent variance needs at least 2 images, got {len(sample_ids)} "
                         f"(infodecomp.mmse.reference_images)")
    total = square = None
    for i in range(0, len(sample_ids), batch_size):
        x = encode_samples(model, ds, sample_ids[i:i + batch_size], batch_size).to(torch.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        square = (x ** 2).sum(0) if square is None else square + (x ** 2).sum(0)
    n = len(sample_ids)
    return ((square - total ** 2 / n) / (n - 1)).clamp_min(0.0)


def gaussian_reference(variance: torch.Tensor, logsnrs: torch.Tensor) -> np.ndarray:
    """The eps-MMSE of a Gaussian with per-element ``variance`` at each log-SNR: ``sum_i v_i e^a / (1 + v_i e^a)``
    (elements of variance 0 add nothing)."""
    v = variance.to(torch.float64).flatten()
    log_v = torch.log(v[v > 0])
    a = torch.as_tensor(logsnrs, dtype=torch.float64).reshape(-1, 1)
    return torch.sigmoid(a + log_v[None]).sum(1).numpy()


def mmse_curves(model, latents: torch.Tensor, images: pd.DataFrame, timesteps: torch.Tensor,
                logsnrs: torch.Tensor, *, n_draws: int, seed: int, batch_size: int = 256,
                reference: np.ndarray | None = None, progress: bool = False) -> pd.DataFrame:
    """The curves (``COLUMNS``) of each image (``latents`` (B, C, h, w), ``images`` its sample_id and caption) under
    its caption and the empty prompt, at the levels ``curve_levels`` gave, ``n_draws`` noise draws per level;
    ``reference`` (one value per level, ``gaussian_reference``) fills the ``gaussian`` column (NaN without)."""
    from tqdm import tqdm

    if len(latents) != len(images):
        raise ValueError(f"{len(latents)} latents for {len(images)} images")
    gauss = np.full(len(logsnrs), np.nan) if reference is None else np.asarray(reference, dtype=np.float64)
    out = []
    for x, r in tqdm(list(zip(latents, images.itertuples())), desc="MMSE curves", disable=not progress):
        image_seed = derive_seed(int(seed), "mmse-curve", r.sample_id)
        for kind, prompt in zip(PROMPTS, (r.caption, "")):
            mmse = mmse_curve(model, x[None], prompt, logsnrs, n_draws=n_draws, seed=image_seed,
                              batch_size=batch_size)
            out.append(pd.DataFrame({"sample_id": r.sample_id, "prompt": kind, "timestep": timesteps.numpy(),
                                     "logsnr": logsnrs.numpy(), "mmse": mmse, "gaussian": gauss}))
    return pd.concat(out, ignore_index=True)[COLUMNS]


def curve_information(curves: pd.DataFrame) -> pd.Series:
    """Per image (index: sample_id), half the trapezoid integral over its levels of the empty prompt's curve minus
    the caption's: the i^s mutual information of the image with its caption inside the levels' range, nats."""
    wide = curves.pivot_table(index=["sample_id", "logsnr"], columns="prompt", values="mmse").reset_index()
    info = {sid: 0.5 * float(np.trapezoid(g["empty"] - g["caption"], g["logsnr"]))
            for sid, g in wide.sort_values(["sample_id", "logsnr"]).groupby("sample_id", sort=False)}
    return pd.Series(info, name="i_s_nats").rename_axis("sample_id")
