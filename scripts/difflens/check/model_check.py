"""Checks of a text-conditioned shapes model on its held-out images (the caption tests, i^s / i^o / denoising error
against relation, attribute and word-order negatives, are the information stage's ARO table, ``info.aro``):

* held-out denoising loss with the caption vs with the empty prompt (the caption must help);
* samples (DDIM + guidance) for held-out captions, judged for colours and relations by ``shapes.follows_caption``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ..data.common import Dataset
from ..data.shapes import follows_caption
from ..info.inputs import encode_samples
from ..models.sampling import ddim_sample

log = logging.getLogger(__name__)


def heldout_losses(model, latents: torch.Tensor, captions: list[str], draws: int, seed: int) -> dict:
    """Mean per-element eps MSE with the caption and with the empty prompt, timesteps uniform, seeded per image."""
    cond_l, uncond_l = [], []
    for i, (x, cap) in enumerate(zip(latents, captions)):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        t = torch.randint(0, model.num_train_timesteps, (draws,), generator=gen)
        eps = torch.randn((draws, *x.shape), generator=gen)
        x_t = model.add_noise(x[None].expand_as(eps), eps, t)
        c = model.encode_text([cap, ""])
        for k, acc in ((0, cond_l), (1, uncond_l)):
            pred = model.denoise(x_t, t, c[k:k + 1].expand(draws, *c.shape[1:])).cpu()
            acc.append(float(((pred - eps) ** 2).mean()))
    return {"loss_conditional": float(np.mean(cond_l)), "loss_unconditional": float(np.mean(uncond_l))}


def sample_grid(model, captions: list[str], seed: int, guidance: float, steps: int) -> tuple[np.ndarray, float]:
    """Generated images (N, R, R, 3) uint8 for the captions and the share that follows its caption."""
    c, r = model.space_to_depth, model.resolution
    # the shapes model's latents are rearranged pixels in [-1, 1]: DDIM clips its x0 estimates to that range
    lat = ddim_sample(model, captions, (3 * c * c, r // c, r // c), seed=seed, guidance=guidance, steps=steps,
                      clip_x0=1.0, progress=True)
    images = ((model.decode_latents(lat) + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    follows = [follows_caption(im, cap) for im, cap in zip(images, captions)]
    return images, float(np.mean(follows))


def save_grid(images: np.ndarray, path, cols: int = 8, scale: int = 4) -> None:
    """Images (N, H, W, 3) uint8 as one PNG (torchvision's ``make_grid``): ``cols`` a row, each tile framed by 1
    black pixel (2 between tiles), cells past the last image black, every pixel a ``scale`` x ``scale`` block."""
    n, h, w, _ = images.shape
    tiles = torch.zeros((-(-n // cols) * cols, 3, h + 2, w + 2), dtype=torch.uint8)
    tiles[:n, :, 1:-1, 1:-1] = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    # make_grid's own padding would frame the whole grid with 2 pixels (not 1), it narrows a lone short row to its
    # images and returns a single image unframed: the tiles carry their frame and fill whole rows instead
    grid = np.ascontiguousarray(make_grid(tiles, nrow=cols, padding=0).permute(1, 2, 0).numpy())
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def check_text_model(model, ds: Dataset, *, n_images: int, seed: int, grid_path=None, n_samples: int = 32,
                     sample_steps: int = 50, guidance: float = 3.0) -> dict:
    """All checks on the test split; returns a JSON-able dict (and writes the sample grid if asked)."""
    test = ds.split("test").head(n_images)
    ids = list(test["sample_id"])
    latents = encode_samples(model, ds, ids)
    result = {"dataset": ds.name, "model": model.source, "n_test_images": len(ids), "seed": seed}
    result.update(heldout_losses(model, latents, list(test["caption"]), draws=8, seed=seed))
    log.info("held-out loss: %s", {k: result[k] for k in ("loss_conditional", "loss_unconditional")})
    if grid_path is not None:
        captions = list(ds.split("test")["caption"].drop_duplicates().head(n_samples))
        images, share = sample_grid(model, captions, seed, guidance, sample_steps)
        save_grid(images, grid_path)
        result["samples"] = {"n": len(captions), "follow_caption": share, "steps": sample_steps,
                             "guidance": guidance, "captions": captions}
        log.info("samples following their caption: %.3f", share)
    return result
