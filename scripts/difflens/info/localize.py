"""Word localization: pixel-wise MI and CMI maps, two DAAM attention baselines, and mIoU against ground-truth masks.

For a word y* of caption c (context = c without the word), on the real image noised at the estimator's draws:

* ``mi``: pixel-wise i^o(x; y*) (the word alone as the prompt, against the empty prompt);
* ``cmi``: pixel-wise i^o(x; y* | context) (caption against context);
* ``attention_itd``: DAAM on the caption's denoiser rows of the same draws (Kong et al.'s "Attention +
  Information" row of Table 3): the cross-attention probabilities of the word's tokens, summed over draws, from every
  cross-attention layer except those of the lowest resolution, each upsampled (bicubic) to the latent grid and
  clamped at 0, averaged over layers (heads are averaged as they are recorded), then over the word's sub-tokens;
* ``attention_ddim``: DAAM as its authors ran it (Kong et al.'s "Attention" row): the image inverted under its
  caption along ``ddim_steps`` DDIM steps, then regenerated under it, the same aggregation over the regeneration's
  calls (``ode.regeneration_attention``); off with ``ddim_steps`` 0;
* ``attention+cmi``: the mean of the min-max-normalised ``attention_itd`` and ``cmi`` maps (difflens's own
  combination: no paper row);
* ``whole_image``: the map that covers everything (the baseline of Kong et al.'s Table 3).

With a list of draw counts (``counts``, infodecomp.n_draws), the maps that depend on the draws are also kept at each
smaller count ``n`` as ``<method>@<n>``, from the first ``n`` draws of the same run (nested, as Table 3's 50 / 100 /
200 columns).

Scoring: every map is upsampled (bilinear) to the model's input resolution, min-max normalised and thresholded;
IoU with the mask; the threshold of each method is chosen on held-out rows (the calibration split, or, when the data
set has none, the other half of a seeded 2-fold split) and applied to the evaluation rows. The ``:oracle`` columns
follow the public code: the best of ``PAPER_GRID`` (``linspace(0.1, 0.5, 50)``, pixels strictly above it) chosen on
the evaluation rows themselves.

At COCO-IT's size (~7k rows at 512 px) no array spans every row at the input resolution: ``row_curves`` upsamples
maps and builds masks a chunk of rows at a time and counts, row by row, the pixels above each threshold inside and
outside the mask; the thresholds are then chosen from those per-row curves alone (``evaluate_curves``).
``localize_shards`` runs this per shard of images, resumably.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..seeding import derive_seed
from ..models.attention import has_text_attention, record_cross_attention, word_token_indices
from .estimators import LogSNRSampler, require_unconditional, score_item
from .inputs import encode_samples, preprocess_mask
from .memory import CHUNK_ROWS, PAPER_THRESHOLDS
from .ode import daam_map, regeneration_attention

#: the maps scored against the masks (``attention_ddim`` only where it was computed)
MAP_METHODS = ("mi", "cmi", "attention_itd", "attention_ddim", "attention+cmi")
METHODS = ("whole_image",) + MAP_METHODS
#: the latent-grid maps behind them (``attention+cmi`` is made from two of them)
BASE_MAPS = ("mi", "cmi", "attention_itd", "attention_ddim")
#: the maps that depend on the estimator's draws, kept at each smaller draw count as ``<map>@<n>``
DRAWN_MAPS = ("mi", "cmi", "attention_itd")
#: the public code's threshold grid, applied with ``>`` (the ``:oracle`` columns)
PAPER_GRID = np.linspace(0.1, 0.5, PAPER_THRESHOLDS)


def at_count(name: str, n: int | None) -> str:
    """The name of method or map ``name`` at draw count ``n`` (None: the full count, the plain name)."""
    return name if n is None else f"{name}@{n}"


def split_count(name: str) -> tuple[str, int | None]:
    """``at_count``'s inverse: ("cmi", 50) from "cmi@50", ("cmi", None) from "cmi"."""
    base, _, n = name.partition("@")
    return base, int(n) if n else None


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map becomes all zeros)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def word_tokens(model, caption: str, word: str, item) -> list[int]:
    """The token positions of ``word`` in ``caption`` as the model's text encoder sees it; a word with none (cut
    off by the encoder's length) is a ValueError naming the sample."""
    tokenizer, length = model.attention_tokenizer
    idx = word_token_indices(tokenizer, caption.lower() if model.kind == "shapes" else caption, word, length)
    if not idx:
        raise ValueError(f"sample {item!r}: word {word!r} has no token in caption {caption!r} within the text "
                         f"encoder's {length} tokens")
    return idx


def word_attention(model, tokens: torch.Tensor, caption: str, words: list[str], item) -> np.ndarray:
    """(n_words, h, w): each word's mean over its sub-tokens of DAAM token maps ``tokens`` (n_tokens, h, w) of
    ``caption``."""
    return np.stack([tokens[word_tokens(model, caption, w, item)].mean(0).float().cpu().numpy() for w in words])


def image_maps(model, x0: torch.Tensor, caption: str, words: list[str], contexts: list[str], *, n_draws: int,
               sampler: LogSNRSampler, seed: int, item, batch_size: int, with_mi: bool = True, counts=(),
               ddim_steps: int = 0) -> dict[str, np.ndarray]:
    """Latent-grid maps (n_words, h, w) of one image and caption: ``cmi`` (pixel-wise i^o, nats), ``cmi_s``
    (pixel-wise i^s), ``attention_itd``, with ``with_mi`` also ``mi``, with ``ddim_steps`` also
    ``attention_ddim``; totals ``cmi_nats`` (and ``mi_nats``); for each draw count of ``counts`` below ``n_draws``,
    the ``DRAWN_MAPS`` at that count (``at_count``), from the first draws of the same run. A model without text
    attention (a class-conditional DiT) has no attention maps."""
    pairs = ([(w, "") for w in words] if with_mi else []) + [(caption, c) for c in contexts]
    n = len(words) if with_mi else 0
    size = tuple(x0.shape[-2:])
    sums, totals, out, lo = {}, 0.0, {}, 0
    attend = has_text_attention(model)
    with record_cross_attention(model) if attend else nullcontext() as rec:
        for hi in sorted({int(c) for c in counts if 0 < int(c) < n_draws} | {n_draws}):
            sc = score_item(model, x0, pairs, n_draws=hi - lo, sampler=sampler, seed=seed, item=item,
                            batch_size=batch_size, pixelwise=True, recorder=rec, attention_prompt=caption,
                            first_draw=lo)
            for k in ("i_o", "i_s"):
                sums[k] = sums.get(k, 0) + sc.maps[k] * (hi - lo)
            totals = totals + sc.per_draw["i_o"].sum(0)
            io = sums["i_o"] / hi
            tag = None if hi == n_draws else hi
            out[at_count("cmi", tag)] = io[n:]
            if attend:
                out[at_count("attention_itd", tag)] = word_attention(model, daam_map(rec.maps, size)[0], caption,
                                                                     words, item)
            if with_mi:
                out[at_count("mi", tag)] = io[:n]
            lo = hi
    out.update(cmi_s=sums["i_s"][n:] / n_draws, cmi_nats=(totals / n_draws)[n:])
    if with_mi:
        out["mi_nats"] = (totals / n_draws)[:n]
    if ddim_steps and attend:
        tokens = regeneration_attention(model, x0[None], [caption], steps=ddim_steps, batch_size=batch_size)[0]
        out["attention_ddim"] = word_attention(model, tokens, caption, words, item)
    return out


def compute_maps(model, ds, rows: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler, seed: int,
                 batch_size: int = 256, progress: bool = True, counts=(), ddim_steps: int = 0) -> dict[str, np.ndarray]:
    """Maps of every word row (in ``rows`` order), one estimator call per (image, caption) (``image_maps``)."""
    from tqdm import tqdm

    require_unconditional(model)
    maps: dict[str, list] = {}
    order = []
    groups = list(rows.groupby(["sample_id", "caption"], sort=False))
    last = (None, None)  # an image with several captions (COCO-IT) is encoded once for its consecutive groups
    for (sid, caption), g in tqdm(groups, desc="word maps", disable=not progress, mininterval=5):
        if last[0] != sid:
            last = (sid, encode_samples(model, ds, [sid])[0])
        x0 = last[1]
        out = image_maps(model, x0, caption, list(g["word"]), list(g["context"]), n_draws=n_draws,
                         sampler=sampler, seed=seed, item=sid, batch_size=batch_size, counts=counts,
                         ddim_steps=ddim_steps)
        for k, v in out.items():
            maps.setdefault(k, []).extend(list(v))
        order.extend(g.index)
    pos = np.argsort(order)
    return {k: np.stack(v)[pos] for k, v in maps.items()}


def upsampled(maps: np.ndarray, resolution: int) -> np.ndarray:
    """(N, h, w) -> (N, R, R), bilinear."""
    t = torch.from_numpy(np.asarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)[:, 0].numpy()


def ground_truth(ds, rows: pd.DataFrame, resolution: int, geometry: str = "crop") -> np.ndarray:
    """(N, R, R) bool masks of the rows' objects on the model's input grid (through the image's ``geometry``)."""
    return np.stack([preprocess_mask(ds.object_mask(r.sample_id, r.objects), resolution, geometry)
                     for r in rows.itertuples()])


def threshold_grid(n_thresholds: int) -> np.ndarray:
    """``n_thresholds`` evenly spaced thresholds inside (0, 1), both ends left out."""
    return np.linspace(0, 1, n_thresholds + 2)[1:-1]


def exact_thresholds(thresholds: np.ndarray, dtype) -> np.ndarray:
    """The thresholds in ``dtype``, each rounded up to the next value of it: for values of that dtype, ``v >= t``
    holds exactly when ``v >= exact_thresholds(t)`` does."""
    t = np.asarray(thresholds).astype(dtype)
    return np.where(t < thresholds, np.nextafter(t, np.array(np.inf, dtype)), t).astype(dtype)


def threshold_passes(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of the ascending ``thresholds`` each value (1-d, float) reaches (``value >= t``; NaN reaches none):
    a guess from the grid's spacing, corrected by comparing with the thresholds around it until none is off."""
    n = len(thresholds)
    t = exact_thresholds(thresholds, values.dtype)
    below = np.concatenate([np.array([-np.inf], t.dtype), t])  # the value must reach below[k] to pass k thresholds
    above = np.concatenate([t, np.array([np.inf], t.dtype)])  # and must not reach above[k]
    step = (t[-1] - t[0]) / (n - 1) if n > 1 and t[-1] > t[0] else 1
    guess = (values - t[0]) / step
    np.floor(guess, out=guess)
    guess += 1
    np.clip(guess, 0, n, out=guess)
    guess[np.isnan(guess)] = 0
    k = guess.astype(np.intp)
    del guess
    while True:
        up = (above[k] <= values) & (k < n)
        k += up
        down = below[k] > values
        k -= down
        if not (up.any() or down.any()):
            return k


def threshold_counts(norm: np.ndarray, mask: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels at or above each threshold, of those the ones inside the mask), (T,) each, of one normalised map and
    its bool mask (same shape); ``thresholds`` ascending. Memory: a few copies of the one map."""
    n_t = len(thresholds)
    code = threshold_passes(norm.ravel(), thresholds)
    code *= 2
    code += mask.ravel()  # bin 2 k + 1: the mask's pixels that pass k thresholds
    counts = np.bincount(code, minlength=2 * n_t + 2).reshape(n_t + 1, 2)
    # threshold k: the pixels that pass more than k thresholds
    above = np.cumsum(counts.sum(1)[::-1])[::-1][1:]
    return above, np.cumsum(counts[::-1, 1])[::-1][1:]


def strict_thresholds(thresholds: np.ndarray, dtype) -> np.ndarray:
    """Thresholds in ``dtype`` such that ``v >= strict_thresholds(t)`` holds exactly when ``v > t`` does, for values
    ``v`` of that dtype (the public code's ``>``)."""
    t = np.asarray(thresholds).astype(dtype)
    return np.where(t <= thresholds, np.nextafter(t, np.array(np.inf, dtype)), t).astype(dtype)


def iou_curves(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray, strict: bool = False) -> np.ndarray:
    """IoU (N, n_thresholds) of each normalised map thresholded at each threshold (``>=``; ``>`` with ``strict``)
    against its mask (maps and masks (N, R, R)); 1.0 where both are empty. Counted row by row: no (N, T, R, R)
    array."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(thresholds) < 0):
        raise ValueError(f"thresholds must be ascending: {thresholds.tolist()}")
    out = np.empty((len(maps), len(thresholds)))
    for i, (m, gt) in enumerate(zip(maps, masks)):
        norm = normalise(m)
        above, inter = threshold_counts(norm, gt, strict_thresholds(thresholds, norm.dtype) if strict else thresholds)
        union = above + int(gt.sum()) - inter
        out[i] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def method_maps(maps: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Every map method's maps (N, R, R) on the input grid, at every draw count ``maps`` holds: the base maps
    (``BASE_MAPS``, ``at_count`` names) upsampled, and ``attention+cmi`` wherever both of its parts are there."""
    out = {k: upsampled(v, resolution) for k, v in maps.items() if split_count(k)[0] in BASE_MAPS}
    for k in list(out):
        base, n = split_count(k)
        if base == "cmi" and at_count("attention_itd", n) in out:
            out[at_count("attention+cmi", n)] = np.stack([
                (normalise(a) + normalise(c)) / 2 for a, c in zip(out[at_count("attention_itd", n)], out[k])])
    return out


def row_curves(maps: dict[str, np.ndarray], masks_of: Callable[[int, int], np.ndarray], resolution: int,
               thresholds: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per row: the IoU curves (N, T) of every map method (``method_maps``) against its mask, at ``thresholds``
    (``>=``; key ``<method>``) and at ``PAPER_GRID`` (``>``; key ``<method>:paper``), and the mask's share of the
    image (N,), which is the ``whole_image`` IoU. ``maps`` holds the latent-grid maps (N, h, w) (``BASE_MAPS``, at
    any draw count); ``masks_of(start, stop)`` gives the bool masks (stop - start, R, R) of those rows. Maps are
    upsampled and masks built ``chunk_rows`` rows at a time: memory grows with the chunk, not with N."""
    base = {k: v for k, v in maps.items() if split_count(k)[0] in BASE_MAPS}
    n = len(maps["cmi"])
    curves: dict[str, np.ndarray] = {}
    whole = np.empty(n)
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        masks = masks_of(a, b)
        whole[a:b] = masks.reshape(b - a, -1).mean(1)
        for m, v in method_maps({k: x[a:b] for k, x in base.items()}, resolution).items():
            for key, grid, strict in ((m, thresholds, False), (f"{m}:paper", PAPER_GRID, True)):
                curves.setdefault(key, np.empty((n, len(grid))))[a:b] = iou_curves(v, masks, grid, strict)
    return curves, whole


def folds(rows: pd.DataFrame, calibration_split: str, seed: int) -> tuple[np.ndarray, str]:
    """Bool (N,) of held-out (threshold-choosing) rows and how they were chosen."""
    calib = (rows["split"] == calibration_split).to_numpy()
    if calib.any() and not calib.all():
        return calib, f"{calibration_split} split"
    fold = np.array([derive_seed(int(seed), "fold", s) % 2 for s in rows["sample_id"]], dtype=bool)
    return fold, "2-fold cross-fit"


def evaluate_curves(rows: pd.DataFrame, curves: dict[str, np.ndarray], whole: np.ndarray, *, calibration_split: str,
                    seed: int, thresholds: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-row IoU table, summary) from every row's IoU curves (``row_curves``: method -> (N, T) at ``thresholds``,
    and ``<method>:paper`` at ``PAPER_GRID``) and mask share (N,): mIoU per method and word type at the held-out
    threshold, and ``<method>:oracle``, the public code's number (the best of the paper's grid, chosen on the
    evaluation rows themselves; without ``:paper`` curves, the best of ``thresholds``)."""
    paper = {m[:-len(":paper")]: c for m, c in curves.items() if m.endswith(":paper")}
    curves = {m: c for m, c in curves.items() if not m.endswith(":paper")}
    held, source = folds(rows, calibration_split, seed)
    per_row = rows[["sample_id", "word", "word_type", "split"]].copy()
    per_row["role"] = np.where(held, "held-out", "evaluation")
    summary = []
    per_row["iou:whole_image"] = whole
    cross = source == "2-fold cross-fit"
    for m, c in curves.items():
        if cross:  # each fold is scored at the threshold chosen on the other one
            th = {f: int(np.argmax(c[held == f].mean(0))) for f in (False, True)}
            chosen = np.array([th[not h] for h in held])
            per_row[f"iou:{m}"] = c[np.arange(len(c)), chosen]
            per_row[f"threshold:{m}"] = thresholds[chosen]
        else:
            k = int(np.argmax(c[held].mean(0)))
            per_row[f"iou:{m}"] = c[:, k]
            per_row[f"threshold:{m}"] = thresholds[k]
    evaluated = np.ones(len(rows), bool) if cross else ~held
    for wtype in ["all", *sorted(rows["word_type"].unique())]:
        sel = evaluated & ((rows["word_type"] == wtype).to_numpy() if wtype != "all" else True)
        if not sel.any():
            continue
        line = {"word_type": wtype, "n": int(sel.sum()), "threshold_source": source}
        line["whole_image"] = float(whole[sel].mean())
        for m, c in curves.items():
            line[m] = float(per_row.loc[sel, f"iou:{m}"].mean())
            line[f"{m}:oracle"] = float(paper.get(m, c)[sel].mean(0).max())
        summary.append(line)
    return per_row, pd.DataFrame(summary)


def evaluate(rows: pd.DataFrame, maps: dict[str, np.ndarray], masks: np.ndarray, *, calibration_split: str,
             seed: int, n_thresholds: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``evaluate_curves`` of latent-grid maps (N, h, w) against masks (N, R, R) held in memory."""
    thresholds = threshold_grid(n_thresholds)
    curves, whole = row_curves(maps, lambda a, b: masks[a:b], masks.shape[-1], thresholds)
    return evaluate_curves(rows, curves, whole, calibration_split=calibration_split, seed=seed,
                           thresholds=thresholds)
