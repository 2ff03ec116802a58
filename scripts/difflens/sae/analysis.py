"""What a k-SAE's latents mean, read against the images' known labels and attributes.

An image's score for a latent is its code value (pooled input) or the maximum of its code over the map positions
(spatial input): ``image_scores``. From the scores (images x latents):

* ``top_images``: each latent's top-10 images;
* ``sigma_label`` (Revelio), in two definitions (``SIGMA_DEFINITIONS``, config ``sae.sigma``), both computed:
  ``sparse`` ranks images by the TopK code, ranks the latents that fire on more than 10 images by their mean score
  over all images, and takes the population standard deviation (ddof 0) of the class ids of each latent's top 10;
  ``public_code`` does what the authors' code did (``sigma_public_code``): images ranked by the ReLU of the *dense*
  pre-activations (``dense_image_scores``), latents that fire on more than 10 images ranked by their mean over the
  images they fire on, the unbiased standard deviation (ddof 1), and running means at N = 100, 200, ... latents.
  sigma_label depends on the arbitrary order of class ids, so ``purity`` (the share of the majority label among the
  top 10) stands beside it;
* the null of random image sets (``random_null``): the mean over M latents is held against the distribution of the
  mean of M random 10-image sets (percentiles and a one-sided p-value), and each latent against the single-set 5th
  (sigma) or 95th (purity) percentile, the share of latents beyond it against the share of random sets beyond it
  (about 5%; less for a discrete score) with a binomial p-value. ``random_baseline`` gives the single-set
  percentiles, which are the wrong yardstick for a mean over hundreds of latents (its spread is sqrt(M) narrower);
* ``attribute_auroc``: for every latent, the AUROC of its score for each label value and each attribute value (a
  0/1 column as itself, any other column one value against the rest), and its best match.

Memory: the scores matrix is the only whole (images x latents) array (the dense one of ``public_code`` is built,
read and dropped before the sparse one). Everything read from it goes over chunks of
latents (or blocks of images) whose working memory is ``memory.CHUNK_BYTES`` (the ``chunk`` arguments), so an
analysis holds the scores plus one chunk: at 6,149 images x 81,920 latents (Flowers-102 test, 64 x 1280), 2 GB plus
256 MB, where ranking all latents at once held 13.5 times the scores (synthetic scores of that size, 32 latents per
image, 102 classes: peak RSS 0.38 GB above the scores, 26 s on one loaded core). A chunk is copied latent-major
(latents, images), so sorting and ranking read contiguous rows.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from . import memory
from .memory import encode_batch, indicator_values, latent_chunk
from .model import KSAE, SAEError

TOP = 10
#: sigma_label's definitions (module docstring); ``sae.sigma`` picks the one headlined
SIGMA_DEFINITIONS = ("sparse", "public_code")
#: the null: random 10-image sets drawn once per SAE, replicate means of M of them, one-sided level of "better"
NULL_SETS, NULL_REPLICATES, ALPHA = 20_000, 2_000, 0.05
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


@torch.no_grad()
def dense_image_scores(sae: KSAE, x: torch.Tensor, positions: int = 1, batch_size: int | None = None) -> torch.Tensor:
    """(images, n_latents) float32 scores from the ReLU of the *dense* pre-activations (every latent, not only the
    TopK ones), as the Revelio code ranked images; ``positions`` rows per image scored by their maximum."""
    if len(x) % positions:
        raise SAEError(f"SAE analysis: {len(x)} vectors are not a whole number of images of {positions} positions")
    scores = torch.zeros(len(x) // positions, sae.config.n_latents)
    batch = max(1, (batch_size or encode_batch(sae.config.n_latents)) // positions) * positions  # whole images
    for a in range(0, len(x), batch):
        pre = sae.pre_activations(x[a:a + batch].to(sae.b_pre.device).float())
        scores[a // positions:(a + len(pre)) // positions] = pre.view(-1, positions, pre.shape[1]).amax(1).cpu()
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


def sigma_and_purity(labels_of_top: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per row of class ids (m, 10): their standard deviation (``ddof`` 0: population, 1: unbiased), and the share of
    the most common id."""
    same = labels_of_top[:, :, None] == labels_of_top[:, None, :]  # (m, 10, 10)
    counts = same.sum(2, dtype=np.int16).max(1, initial=0)  # of each row's most common id
    return labels_of_top.std(axis=1, ddof=ddof), counts / max(1, labels_of_top.shape[1])


def ranked_sigma(scores, labels: np.ndarray, top: int = TOP, step: int = 100, *, ddof: int = 0,
                 firing_mean: bool = False) -> dict:
    """sigma_label and purity over the latents that fire on more than ``top`` images, ranked by their mean score
    over all images (``firing_mean`` False) or over the images they fire on (True); class-id standard deviation
    with ``ddof``; the running mean at ``step``, 2 ``step``, ... ranked latents. ``labels``: class ids (images,)."""
    fires, mean = latent_stats(scores)
    if firing_mean:
        mean = mean * len(as_array(scores)) / np.maximum(fires, 1)
    eligible = np.flatnonzero(fires > top)
    order = eligible[np.argsort(-mean[eligible], kind="stable")]
    idx, _ = top_images(scores, top, order)
    sigma, purity = sigma_and_purity(labels[idx], ddof)
    cumulative = {int(m): float(sigma[:m].mean()) for m in range(step, len(order) + 1, step)}
    return {"latents": order, "sigma": sigma, "purity": purity, "n_eligible": int(len(order)),
            "sigma_label": float(sigma.mean()) if len(order) else float("nan"),
            "purity_mean": float(purity.mean()) if len(order) else float("nan"), "cumulative": cumulative,
            "ddof": ddof}


def sigma_label(scores, labels: np.ndarray, top: int = TOP, step: int = 100) -> dict:
    """The ``sparse`` definition (module docstring) on TopK-code scores (``image_scores``)."""
    return ranked_sigma(scores, labels, top, step)


def sigma_public_code(dense_scores, labels: np.ndarray, top: int = TOP, step: int = 100) -> dict:
    """The ``public_code`` definition on dense scores (``dense_image_scores``): the Revelio code's latents ordered by
    their mean over the images they fire on, ddof 1, running means at 100, 200, ... (here only up to the eligible
    latents: the code's ordering of the others is arbitrary, all of them tied at 0)."""
    return ranked_sigma(dense_scores, labels, top, step, ddof=1, firing_mean=True)


def random_sets(labels: np.ndarray, draws: int, top: int = TOP, seed: int = 0, ddof: int = 0):
    """(sigma, purity) of ``draws`` random sets of ``top`` images, each without replacement (sets drawn with
    replacement are redrawn until none repeats an image)."""
    rng = np.random.default_rng(seed)
    n, size = len(labels), min(top, len(labels))
    sets = rng.integers(0, n, size=(draws, size))
    while True:
        ordered = np.sort(sets, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(1))
        if not len(bad):
            break
        sets[bad] = rng.permuted(np.tile(np.arange(n), (len(bad), 1)), axis=1)[:, :size] if n < 4 * size \
            else rng.integers(0, n, size=(len(bad), size))
    return sigma_and_purity(labels[sets], ddof)


def random_baseline(labels: np.ndarray, draws: int = 1000, top: int = TOP, seed: int = 0, ddof: int = 0) -> dict:
    """sigma and purity of ``draws`` single random sets of ``top`` images: mean, 5th and 95th percentile (the
    yardstick of one latent, not of a mean over many: ``random_null``)."""
    sigma, purity = random_sets(labels, draws, top, seed, ddof)
    return {name: {"mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
            for name, v in (("sigma", sigma), ("purity", purity))}


def replicate_means(pool: np.ndarray, m: int, replicates: int = NULL_REPLICATES, seed: int = 0) -> np.ndarray:
    """Means of ``m`` values drawn (with replacement) from ``pool``, ``replicates`` times: the null distribution of a
    mean over m latents' random sets, drawn in blocks of ``memory.CHUNK_BYTES``."""
    rng = np.random.default_rng(seed)
    out = np.empty(replicates)
    block = max(1, memory.CHUNK_BYTES // (8 * max(1, m)))
    for a in range(0, replicates, block):
        n = min(block, replicates - a)
        out[a:a + n] = pool[rng.integers(0, len(pool), size=(n, m))].mean(1)
    return out


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p) +
            (n - j) * math.log1p(-p) if p < 1 else (0.0 if j == n else -math.inf) for j in range(k, n + 1)]
    top = max(logs)
    return float(min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))) if top > -math.inf else 0.0


def null_test(values: np.ndarray, pool: np.ndarray, higher_is_better: bool, replicates: int = NULL_REPLICATES,
              seed: int = 0) -> dict:
    """The latents' per-latent ``values`` (M of them) against random sets' ``pool``: the null of their mean
    (``mean_p5``, ``mean_p50``, ``mean_p95`` of ``replicate_means``), the one-sided ``p_value`` of the observed mean
    being that good, and the share of latents beyond the single-set 95th percentile (purity; 5th for sigma),
    ``beyond_share``, against the share of random sets beyond it, ``beyond_chance``, with its binomial p-value.
    ``better``: the mean's p-value is under ``ALPHA``."""
    values = np.asarray(values, np.float64)
    m = len(values)
    if m == 0 or len(pool) == 0:
        nan = float("nan")
        return {"m": m, "observed": nan, "mean_p5": nan, "mean_p50": nan, "mean_p95": nan, "p_value": nan,
                "threshold": nan, "beyond_share": nan, "beyond_chance": nan, "beyond_p_value": nan, "better": False}
    means = replicate_means(pool, m, replicates, seed)
    observed = float(values.mean())
    if higher_is_better:
        hits, threshold = int((means >= observed).sum()), float(np.percentile(pool, 95))
        beyond, chance = values > threshold, float((pool > threshold).mean())
    else:
        hits, threshold = int((means <= observed).sum()), float(np.percentile(pool, 5))
        beyond, chance = values < threshold, float((pool < threshold).mean())
    p = (1 + hits) / (1 + replicates)
    lo, mid, hi = np.percentile(means, [5, 50, 95])
    return {"m": m, "observed": observed, "mean_p5": float(lo), "mean_p50": float(mid), "mean_p95": float(hi),
            "p_value": float(p), "threshold": threshold, "beyond_share": float(beyond.mean()),
            "beyond_chance": chance, "beyond_p_value": binomial_upper_tail(int(beyond.sum()), m, chance),
            "better": bool(p < ALPHA)}


def random_null(sig: dict, labels: np.ndarray, top: int = TOP, seed: int = 0, sets: int = NULL_SETS,
                replicates: int = NULL_REPLICATES) -> dict:
    """``null_test`` of a ``ranked_sigma`` result's per-latent sigma (lower is better) and purity (higher) against
    ``sets`` random sets of ``top`` images of the same ``labels``, with the same ddof."""
    pool_sigma, pool_purity = random_sets(labels, sets, top, seed, sig.get("ddof", 0))
    return {"sigma": null_test(sig["sigma"], pool_sigma, False, replicates, seed),
            "purity": null_test(sig["purity"], pool_purity, True, replicates, seed + 1)}


def indicator_columns(rows: pd.DataFrame, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """0/1 indicators (images, m) named ``column=value`` of the given columns of a row table: a 0/1 column as
    itself (``column=1``), another column one indicator per value (``memory.indicator_values``); undefined entries
    (-1, "") are 0 and values that every or no image has are left out. The label's indicators are named by class
    name (``label=tabby cat``, not ``label=9``) where ``label_name`` maps class ids to distinct names."""
    names, out = [], []
    for column in columns:
        if column not in rows.columns:
            raise SAEError(f"SAE analysis: unknown column {column!r}; the rows have {list(rows.columns)}")
        values = rows[column].astype(str).to_numpy()
        shown = class_names(rows) if column == "label" else {}
        for v in indicator_values(values):
            hit = values == v
            if 0 < hit.sum() < len(hit):
                names.append(f"{column}={shown.get(v, v)}")
                out.append(hit)
    return names, np.stack(out, axis=1).astype(np.float64) if out else np.zeros((len(rows), 0))


def class_names(rows: pd.DataFrame) -> dict[str, str]:
    """{class id as text: class name} from the rows' ``label_name``, or {} where there is none or two ids share a
    name (then ids name the classes)."""
    if "label_name" not in rows.columns or "label" not in rows.columns:
        return {}
    pairs = rows[["label", "label_name"]].astype(str).drop_duplicates()
    if pairs["label"].duplicated().any() or pairs["label_name"].duplicated().any():
        return {}
    return dict(zip(pairs["label"], pairs["label_name"]))


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
             top: int = TOP, sigma: str = "sparse", seed: int = 0) -> dict:
    """Everything the analysis reads from one SAE on the vectors ``x`` of the images ``rows`` (``positions`` rows of
    ``x`` per image): ``scores`` (images, n_latents), the indicator ``names``, the ``live`` latents, their AUROC table
    ``auc`` (live, indicators), ``sigmas`` (``ranked_sigma``'s dict of each of ``SIGMA_DEFINITIONS``, on
    ``rows["label"]``), ``sigma`` (the one named by ``sigma``, headlined), its ``null`` (``random_null``) and
    ``best_auroc`` (each indicator's best AUROC over the live latents). The same for a trained SAE and its controls
    (``controls``). The dense scores of ``public_code`` are dropped before the sparse ones are built."""
    if sigma not in SIGMA_DEFINITIONS:
        raise SAEError(f"sae.sigma: {sigma!r} is not one of {SIGMA_DEFINITIONS}")
    labels = rows["label"].to_numpy()
    dense = dense_image_scores(sae, x, positions=positions)
    public = sigma_public_code(dense, labels, top=top)
    del dense
    scores = image_scores(sae, x, positions=positions)
    names, indicators = indicator_columns(rows, columns)
    live = live_latents(scores)
    auc = attribute_auroc(scores, indicators, live)
    best = {name: float(auc[:, j].max()) for j, name in enumerate(names)} if len(live) else {}
    sigmas = {"sparse": sigma_label(scores, labels, top=top), "public_code": public}
    return {"scores": scores, "names": names, "live": live, "auc": auc, "sigmas": sigmas, "sigma": sigmas[sigma],
            "sigma_definition": sigma, "null": random_null(sigmas[sigma], labels, top, seed), "best_auroc": best}


def null_columns(null: dict) -> dict:
    """A ``random_null`` result as flat ``null_<metric>_<field>`` numbers (a summary's and a table's columns)."""
    return {f"null_{metric}_{field}": v for metric, test in null.items() for field, v in test.items()}


def read_summary(read: dict) -> dict:
    """The numbers of ``read_sae``'s result that a run's summary holds, for the trained SAE and each control: live
    latents, latents eligible for sigma_label, sigma_label and mean purity (headlined: the ``sigma_definition``;
    each definition's under its own name), the null of random sets (``null_columns``), ``better_than_random``
    (purity's mean beats the null at ``ALPHA``) and the best AUROC per indicator."""
    sig = read["sigma"]
    both = {f"{metric}_{name}": s[key] for name, s in read["sigmas"].items()
            for metric, key in (("sigma_label", "sigma_label"), ("purity", "purity_mean"), ("sigma_eligible",
                                                                                            "n_eligible"))}
    return {"live_latents": int(len(read["live"])), "sigma_definition": read["sigma_definition"],
            "sigma_eligible": sig["n_eligible"], "sigma_label": sig["sigma_label"], "purity": sig["purity_mean"],
            **both, **null_columns(read["null"]), "better_than_random": read["null"]["purity"]["better"],
            "best_auroc": read["best_auroc"]}


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
