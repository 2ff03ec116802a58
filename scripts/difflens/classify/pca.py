"""PCA views of spatial maps: the top three principal components of the per-position channel vectors as RGB.

Every position (h, w) of every image is one C-vector; the components are fitted on those of the first ``n_fit``
images (all by default) from their covariance, accumulated in float64 chunk by chunk, so memory stays at C x C.
Each component's sign is fixed (its largest-magnitude loading is positive) and its values are scaled to [0, 1] over
the whole set between their 1st and 99th percentiles (values outside are clipped), so colours mean the same in
every image of one call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_IMAGES = 64
PERCENTILES = (1.0, 99.0)


def _positions(maps: torch.Tensor) -> torch.Tensor:
    """The per-position C-vectors (n * H * W, C) of maps (n, C, H, W), float64."""
    return maps.detach().cpu().to(torch.float64).permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def principal_directions(maps: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and the top-``k`` principal directions (C, k) of the maps' position vectors, largest variance
    first, each signed so that its largest-magnitude loading is positive."""
    total, gram, rows = torch.zeros(maps.shape[1], dtype=torch.float64), 0, 0
    for start in range(0, len(maps), CHUNK_IMAGES):
        x = _positions(maps[start:start + CHUNK_IMAGES])
        total, gram, rows = total + x.sum(0), gram + x.T @ x, rows + len(x)
    mean = total / rows
    cov = gram / rows - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    top = vectors[:, -k:].flip(1)
    lead = top.abs().argmax(0)
    return mean, top * torch.sign(top[lead, torch.arange(k)])


def pca_rgb(maps: torch.Tensor, n_fit: int | None = None) -> torch.Tensor:
    """RGB views (N, 3, H, W) in [0, 1] of maps (N, C, H, W): components fitted on the first ``n_fit`` images (all
    when None), projected for all, scaled per component over the whole set (module docstring)."""
    if maps.dim() != 4 or maps.shape[1] < 3 or len(maps) == 0:
        raise ValueError(f"pca_rgb: maps must be (N, C, H, W) with N >= 1 and C >= 3, got {tuple(maps.shape)}")
    if n_fit is not None and not 1 <= n_fit:
        raise ValueError(f"pca_rgb: n_fit must be >= 1 or None, got {n_fit!r}")
    mean, directions = principal_directions(maps[:n_fit])
    n, _, h, w = maps.shape
    proj = torch.cat([(_positions(maps[s:s + CHUNK_IMAGES]) - mean) @ directions
                      for s in range(0, n, CHUNK_IMAGES)]).numpy()  # (N * H * W, 3)
    lo, hi = np.percentile(proj, PERCENTILES, axis=0)
    scaled = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return torch.from_numpy(scaled).to(torch.float32).reshape(n, h, w, 3).permute(0, 3, 1, 2).contiguous()


def save_pca_figure(images_uint8: np.ndarray, pca: torch.Tensor, path: str | Path, cols: int = 8,
                    titles: list[str] | None = None, title: str | None = None) -> Path:
    """A PNG of each input image (N, H, W, 3) uint8 beside its PCA view (N, 3, h, w), upsampled (nearest) to the
    image size; ``cols`` image/PCA pairs per row, each pair titled (``titles``, or its index), ``title`` above all.
    Drawn with matplotlib's Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"save_pca_figure: images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if pca.dim() != 4 or pca.shape[:2] != (len(images), 3):
        raise ValueError(f"save_pca_figure: pca must be ({len(images)}, 3, h, w) for {len(images)} images, got "
                         f"{tuple(pca.shape)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"save_pca_figure: {len(titles)} titles for {len(images)} images")
    views = F.interpolate(pca.detach().cpu().float(), size=images.shape[1:3], mode="nearest")
    views = views.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(2 * cols * 1.6, rows * 1.8 + (0.4 if title else 0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (image, view) in enumerate(zip(images, views)):
        name = titles[i] if titles is not None else f"#{i}"
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(image, interpolation="nearest")
        left.set_title(name, fontsize=9)
        right.imshow(view, interpolation="nearest")
        right.set_title(f"{name} PCA", fontsize=9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
