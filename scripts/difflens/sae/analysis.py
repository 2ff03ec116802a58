"""What a k-SAE's latents mean, read from the sparse code (never from the dense pre-activations, as the Revelio code
did) against the images' known labels and attributes.

An image's score for a latent is its code value (pooled input) or the maximum of its code over the map positions
(spatial input): ``image_scores``. From the scores (images x latents):

* ``top_images``: each latent's top-10 images;
* ``sigma_label`` (Revelio): over the latents that fire on more than 10 images, ranked by mean activation, the
  standard deviation of the class ids of each latent's top 10, averaged; with the cumulative mean at 100, 200, ...
  latents. It depends on the arbitrary order of class ids, so ``purity`` (the share of the majority label among
  the top 10) stands beside it; both also for random sets of 10 images (``random_baseline``: mean, 5th and 95th
  percentile);
* ``attribute_auroc``: for every latent, the AUROC of its score for each label value and each attribute value (a
  0/1 column as itself, any other column one value against the rest), and its best match.

Memory: the scores matrix is the only whole (images x latents) array. Everything read from it goes over chunks of
latents (or blocks of images) whose working memory is ``memory.CHUNK_BYTES`` (the ``chunk`` arguments), so an
analysis holds the scores plus one chunk: at 6,149 images x 81,920 latents (Flowers-102 test, 64 x 1280), 2 GB plus
256 MB, where ranking all latents at once held 13.5 times the scores (synthetic scores of that size, 32 latents per
image, 102 classes: peak RSS 0.38 GB above the scores, 26 s on one loaded core). A chunk is copied latent-major
(latents, images), so sorting and ranking read contiguous rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import memory
from .memory import encode_batch, indicator_values, latent_chunk
from .model import KSAE, SAEError

TOP = 10
#: working bytes per (image, latent) entry of a chunk: ranking (the chunk's copy of the scores, 4, and
#: ``row_ranks``, 24) and picking top images (the negated copy, 4, and its sort order, 8)
RANK_BYTES, TOP_BYTES = 28, 12


@torch.no_grad()
def image_scores(sae: KSAE, x: torch.Tensor, positions: int = 1, batch_size: int | None = None) -> torch.Tensor:
    """(images, n_latents) float32 scores of the rows of ``x``: ``positions`` consecutive rows per image (1 =
    pooled vectors; H x W = map positions, scored by their maximum). Built from the sparse code by a scatter-max,
    never as a dense code per vector; ``batch_size`` vectors are encoded at a time (None: as many as
    ``memory.encode_batch`` allows; a batch may end inside an image)."""
    if len(x) % positions:
        raise SAEError(f"SAE analysis: {len(x)} vectors are not a whole number of images of {positions} positions")
    n = sae.config.n_latents
    scores = torch.zeros(len(x) // positions, n)
    batch = batch_size or encode_batch(n)
    for a in range(0, len(x), batch):
        code = sae.encode(x[a:a + batch].to(sae.b_pre.device).float())
        image = (code.rows().cpu() + a) // positions
        scores.view(-1).scatter_reduce_(0, image * n + code.indices.cpu(), code.values.float().cpu(), "amax")
    return scores


def as_array(scores) -> np.ndarray:
    """Scores (images, n_latents) as a numpy array: a CPU tensor's own memory, not a copy."""
    return scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)


def _columns(s: np.ndarray, latents) -> np.ndarray:
    return np.arange(s.shape[1]) if latents is None else np.asarray(latents, np.int64)


def latent_stats(scores) -> tuple[np.ndarray, np.ndarray]:
    """(images each latent fires on, int64 (n_latents,); its mean score, float64 (n_latents,)), read over blocks of
    images (a boolean mask of the whole matrix would be a quarter of it)."""
    s = as_array(scores)
    fires, sums = np.zeros(s.shape[1], np.int64), np.zeros(s.shape[1])
    block = max(1, memory.CHUNK_BYTES // max(1, s.shape[1]))
    for a in range(0, len(s), block):
        rows = s[a:a + block]
        fires += np.count_nonzero(rows > 0, axis=0)
        sums += rows.sum(0, dtype=np.float64)
    return fires, sums / max(1, len(s))


def live_latents(scores) -> np.ndarray:
    """Latents that fire (score > 0) on at least one image."""
    return np.flatnonzero(latent_stats(scores)[0] > 0)


def top_images(scores, top: int = TOP, latents=None, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values), each (latents, top): the highest-scoring images of every latent (or of ``latents``),
    best first, equal scores in image order. ``chunk`` latents at a time (None: sized by ``memory.CHUNK_BYTES``)."""
    s = as_array(scores)
    cols, top = _columns(s, latents), min(top, len(s))
    indices, values = np.empty((len(cols), top), np.int64), np.empty((len(cols), top), s.dtype)
    step = chunk or latent_chunk(len(s), TOP_BYTES)
    for a in range(0, len(cols), step):
        part = s.T[cols[a:a + step]]  # (chunk, images): a contiguous copy, negated in place
        np.negative(part, out=part)
        best = np.argsort(part, axis=1, kind="stable")[:, :top].copy()  # stable: ties keep image order
        indices[a:a + step], values[a:a + step] = best, -np.take_along_axis(part, best, 1)
        del part, best  # before the next chunk's
    return indices, values


def sigma_and_purity(labels_of_top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of class ids (m, 10): their standard deviation, and the share of the most common id."""
    same = labels_of_top[:, :, None] == labels_of_top[:, None, :]  # (m, 10, 10)
    counts = same.sum(2, dtype=np.int16).max(1, initial=0)  # of each row's most common id
    return labels_of_top.std(axis=1), counts / max(1, labels_of_top.shape[1])


def sigma_label(scores, labels: np.ndarray, top: int = TOP, step: int = 100) -> dict:
    """Revelio's sigma_label and the purity beside it, over the latents that fire on more than ``top`` images,
    ranked by mean activation (module docstring). ``labels``: class ids (images,)."""
    fires, mean = latent_stats(scores)
    eligible = np.flatnonzero(fires > top)
    order = eligible[np.argsort(-mean[eligible], kind="stable")]
    idx, _ = top_images(scores, top, order)
    sigma, purity = sigma_and_purity(labels[idx])
    cumulative = {int(m): float(sigma[:m].mean()) for m in range(step, len(order) + 1, step)}
    return {"latents": order, "sigma": sigma, "purity": purity, "n_eligible": int(len(order)),
            "sigma_label": float(sigma.mean()) if len(order) else float("nan"),
            "purity_mean": float(purity.mean()) if len(order) else float("nan"), "cumulative": cumulative}


def random_baseline(labels: np.ndarray, draws: int = 1000, top: int = TOP, seed: int = 0) -> dict:
    """sigma and purity of ``draws`` random sets of ``top`` images (without replacement): mean, 5th and 95th
    percentile."""
    rng = np.random.default_rng(seed)
    sets = np.stack([rng.choice(len(labels), size=min(top, len(labels)), replace=False) for _ in range(draws)])
    sigma, purity = sigma_and_purity(labels[sets])
    return {name: {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
            for name, v in (("sigma", sigma), ("purity", purity))}


def indicator_columns(rows: pd.DataFrame, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """0/1 indicators (images, m) named ``column=value`` of the given columns of a row table: a 0/1 column as
    itself (``column=1``), another column one indicator per value (``memory.indicator_values``); undefined entries
    (-1, "") are 0 and values that every or no image has are left out."""
    names, out = [], []
    for column in columns:
        if column not in rows.columns:
            raise SAEError(f"SAE analysis: unknown column {column!r}; the rows have {list(rows.columns)}")
        values = rows[column].astype(str).to_numpy()
        for v in indicator_values(values):
            hit = values == v
            if 0 < hit.sum() < len(hit):
                names.append(f"{column}={v}")
                out.append(hit)
    return names, np.stack(out, axis=1).astype(np.float64) if out else np.zeros((len(rows), 0))


def row_ranks(t: np.ndarray) -> np.ndarray:
    """1-based ranks (float64) along each row of a C-contiguous ``t`` (latents, images), tied values sharing their
    mean rank (as scipy.stats.rankdata, whose import alone took a few seconds per job). Row-wise, so every pass
    reads contiguous memory; 24 bytes per entry at its peak besides ``t`` (measured): call it on chunks of rows."""
    m = t.shape[1]
    order = np.argsort(t, axis=1, kind="stable")
    ordered = np.take_along_axis(t, order, 1)
    starts = np.ones(t.shape, bool)  # a position that starts a run of equal values
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=starts[:, 1:])
    del ordered
    position = np.arange(m, dtype=np.int32)
    first = np.where(starts, position, 0)  # int32: the position where each value's run starts
    np.maximum.accumulate(first, axis=1, out=first)
    starts[:, :-1] = starts[:, 1:]  # now: a position that ends a run
    starts[:, -1] = True
    last = np.where(starts, position, m - 1)[:, ::-1]  # the position where the run ends, filled from the right
    np.minimum.accumulate(last, axis=1, out=last)
    del starts
    mean = first.astype(np.float64)
    mean += last[:, ::-1]
    mean *= 0.5
    mean += 1
    del first, last
    ranks = np.empty(t.shape, np.float64)
    np.put_along_axis(ranks, order, mean, 1)
    return ranks


def average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of each column of ``s`` (images, latents), ties sharing their mean rank (``row_ranks``)."""
    return row_ranks(np.ascontiguousarray(np.asarray(s).T)).T


def attribute_auroc(scores, indicators: np.ndarray, latents=None, chunk: int | None = None) -> np.ndarray:
    """AUROC (latents, m) of each latent's scores (of every latent, or of ``latents``) for each indicator column:
    the Mann-Whitney statistic from ranks, tied scores sharing their mean rank (most images score 0 for a sparse
    latent). Ranked ``chunk`` latents at a time (None: sized by ``memory.CHUNK_BYTES``); the rank sums are exact
    (half-integers), so the result does not depend on the chunk."""
    s = as_array(scores)
    cols = _columns(s, latents)
    pos = indicators.sum(0)  # (m,)
    neg = len(indicators) - pos
    out = np.empty((len(cols), indicators.shape[1]))
    step = chunk or latent_chunk(len(s), RANK_BYTES)
    for a in range(0, len(cols), step):
        out[a:a + step] = row_ranks(s.T[cols[a:a + step]]) @ indicators  # rank sums (chunk, m)
    out -= pos * (pos + 1) / 2
    out /= pos * neg
    return out


def read_sae(sae: KSAE, x: torch.Tensor, rows: pd.DataFrame, positions: int, columns: list[str],
             top: int = TOP) -> dict:
    """Everything the analysis reads from one SAE on the vectors ``x`` of the images ``rows`` (``positions`` rows of
    ``x`` per image): ``scores`` (images, n_latents), the indicator ``names``, the ``live`` latents, their AUROC table
    ``auc`` (live, indicators), ``sigma`` (``sigma_label``'s dict, on ``rows["label"]``) and ``best_auroc`` (each
    indicator's best AUROC over the live latents). The same for a trained SAE and its controls (``controls``)."""
    scores = image_scores(sae, x, positions=positions)
    names, indicators = indicator_columns(rows, columns)
    live = live_latents(scores)
    auc = attribute_auroc(scores, indicators, live)
    best = {name: float(auc[:, j].max()) for j, name in enumerate(names)} if len(live) else {}
    return {"scores": scores, "names": names, "live": live, "auc": auc,
            "sigma": sigma_label(scores, rows["label"].to_numpy(), top=top), "best_auroc": best}


def read_summary(read: dict) -> dict:
    """The numbers of ``read_sae``'s result that a run's summary holds, for the trained SAE and each control: live
    latents, latents eligible for sigma_label, sigma_label, mean purity, best AUROC per indicator."""
    sig = read["sigma"]
    return {"live_latents": int(len(read["live"])), "sigma_eligible": sig["n_eligible"],
            "sigma_label": sig["sigma_label"], "purity": sig["purity_mean"], "best_auroc": read["best_auroc"]}


def latent_table(scores, labels: np.ndarray, names: list[str], auc: np.ndarray, top: int = TOP) -> pd.DataFrame:
    """One row per live latent (``live_latents``, the rows of ``auc``): frequency (share of images it fires on),
    mean activation, top-``top`` purity and sigma, the indicator ``names`` of its best AUROC and that AUROC, and its
    top images (row positions)."""
    fires, mean = latent_stats(scores)
    live = np.flatnonzero(fires > 0)
    if auc.shape != (len(live), len(names)):
        raise SAEError(f"SAE analysis: AUROC table {auc.shape} does not match {len(live)} live latents x "
                       f"{len(names)} indicators")
    idx, _ = top_images(scores, top, live)
    sigma, purity = sigma_and_purity(labels[idx])
    best = auc.argmax(1) if len(names) else np.zeros(len(live), int)
    return pd.DataFrame({
        "latent": live, "frequency": fires[live] / max(1, len(as_array(scores))), "mean_activation": mean[live],
        "purity": purity, "sigma": sigma,
        "best_attribute": [names[b] for b in best] if len(names) else "",
        "auroc": auc[np.arange(len(live)), best] if len(names) else np.nan,
        "top_images": [" ".join(map(str, row)) for row in idx]})


def tile_images(rows: list[list[np.ndarray]], columns: int, caption: float = 0.0):
    """Images (H, W, 3 uint8) tiled on white, one list per mosaic row, ``columns`` cells wide; each row is
    ``caption`` x the cell size taller for a caption under its images (0: just a gap). Returns (mosaic, cell size,
    gap, row pitch): image (r, c) starts at y = gap + r * pitch, x = gap + c * (size + gap)."""
    size = max((im.shape[0] for row in rows for im in row), default=32)
    gap = max(2, size // 8)
    pitch = size + (int(size * caption) or gap)
    mosaic = np.full((max(1, len(rows)) * pitch + gap, columns * (size + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            im = im[:size, :size]
            y, x = gap + r * pitch, gap + c * (size + gap)
            mosaic[y:y + im.shape[0], x:x + im.shape[1]] = im
    return mosaic, size, gap, pitch


def save_top_image_grid(path, dataset, rows: pd.DataFrame, table: pd.DataFrame, latents: list[int],
                        title: str, top: int = TOP) -> None:
    """A PNG: one row per latent of ``latents`` (in order), its top images from ``dataset`` (a ``Dataset``), each
    captioned with its label; the row named by latent id, top-10 purity and best attribute with its AUROC. The
    images are tiled into one mosaic drawn in a single axes (one axes per image took seconds per grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = table.set_index("latent")
    shown = [int(v) for v in latents if int(v) in info.index]
    cells = [[rows.iloc[pos] for pos in map(int, str(info.loc[latent, "top_images"]).split()[:top])]
             for latent in shown]
    images = {s["sample_id"]: np.asarray(dataset.load_image(s["sample_id"]).convert("RGB"))
              for row in cells for s in row}
    # half a cell of room for the caption under each image
    mosaic, size, gap, pitch = tile_images([[images[s["sample_id"]] for s in row] for row in cells], top, 0.5)
    height, width = mosaic.shape[:2]
    fig, ax = plt.subplots(figsize=(1.1 * top + 1.6, 1.3 * max(1, len(shown)) + 0.4))
    for r, (latent, row) in enumerate(zip(shown, cells)):
        y = gap + r * pitch
        for c, sample in enumerate(row):
            x = gap + c * (size + gap)
            ax.text(x + size / 2, y + size + 1, str(sample["label_name"]), ha="center", va="top", fontsize=5)
        meta = info.loc[latent]
        ax.text(-gap, y + size / 2, f"#{latent}\npurity {meta['purity']:.1f}\n{meta['best_attribute']}\n"
                f"AUROC {meta['auroc']:.2f}", ha="right", va="center", fontsize=5)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xlim(-size * 1.6, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    ax.set_title(title, fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95)
    fig.savefig(path, dpi=130)
    plt.close(fig)
