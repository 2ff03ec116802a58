"""The steering grid of one SAE: a row per steered latent, a column per edit (the unedited regeneration first), each
cell the first ``per_cell`` images side by side (``images`` as ``run.run_steering`` returns them)."""
from __future__ import annotations

import numpy as np


def edit_columns(images: dict[str, np.ndarray], source: str, latent: int) -> list[str]:
    """The edit labels of ``latent`` under ``source``, in the order they were run."""
    prefix = f"{source}/{latent}/"
    return [k[len(prefix):] for k in images if k.startswith(prefix)]


def cell(images: np.ndarray, per_cell: int) -> np.ndarray:
    """The first ``per_cell`` images (m, H, W, 3) side by side with a 1-pixel dark gap."""
    shown = list(images[:per_cell])
    gap = np.full((shown[0].shape[0], 1, 3), 80, np.uint8)
    return np.concatenate([p for im in shown for p in (im, gap)][:-1], axis=1)


def save_steering_grid(path, images: dict[str, np.ndarray], chosen, source: str, title: str,
                       per_cell: int = 2) -> None:
    """A PNG of the grid (module docstring) for ``source``; rows named by latent id and word."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(int(j), str(w)) for j, w in zip(chosen["latent"], chosen["word"])]
    labels = ["unedited"] + edit_columns(images, source, rows[0][0])
    n_rows, n_cols = len(rows), len(labels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * per_cell * n_cols + 1, 1.4 * n_rows + 0.6),
                             squeeze=False)
    for r, (j, word) in enumerate(rows):
        for c, label in enumerate(labels):
            key = f"{source}/unedited" if c == 0 else f"{source}/{j}/{label}"
            ax = axes[r, c]
            if key in images:
                ax.imshow(cell(images[key], per_cell), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"#{j} {word}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
