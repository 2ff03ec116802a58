"""Word localization: pixel-wise MI and CMI maps, the DAAM attention baseline, and mIoU against ground-truth masks.

For a word y* of caption c (context = c without the word), on the real image noised at the estimator's draws:

* ``mi``: pixel-wise i^o(x; y*) (the word alone as the prompt, against the empty prompt);
* ``cmi``: pixel-wise i^o(x; y* | context) (caption against context);
* ``attention``: DAAM on the caption's denoiser rows of the same draws: the cross-attention probabilities of the
  word's tokens, summed over draws, from every cross-attention layer except those of the lowest resolution, each
  upsampled (bicubic) to the latent grid and clamped at 0, averaged over layers (heads are averaged as they are
  recorded), then over the word's sub-tokens;
* ``attention+cmi``: the mean of the two min-max-normalised maps (difflens's combination);
* ``whole_image``: the map that covers everything (the baseline of Kong et al.'s Table 3).

Scoring: every map is upsampled (bilinear) to the model's input resolution, min-max normalised and thresholded;
IoU with the mask; the threshold of each method is chosen on held-out rows (the calibration split, or, when the data
set has none, the other half of a seeded 2-fold split) and applied to the evaluation rows. The best threshold chosen
on the evaluation rows themselves, as the public code did, is reported beside it as the oracle.

At COCO-IT's size (~7k rows at 512 px) no array spans every row at the input resolution: ``row_curves`` upsamples
maps and builds masks a chunk of rows at a time and counts, row by row, the pixels above each threshold inside and
outside the mask; the thresholds are then chosen from those per-row curves alone (``evaluate_curves``).
``localize_shards`` runs this per shard of images, resumably.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..seeding import derive_seed
from ..models.attention import aggregate_maps, record_cross_attention, word_token_indices
from .estimators import LogSNRSampler, require_unconditional, score_item
from .inputs import encode_samples, preprocess_mask
from .memory import CHUNK_ROWS

MAP_METHODS = ("mi", "cmi", "attention", "attention+cmi")
METHODS = ("whole_image",) + MAP_METHODS


def daam_map(layer_maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W) token maps from per-layer (1, T, h, w) recorded sums: lowest resolution dropped (unless it is the
    only one), bicubic to ``size``, clamped at 0, mean over layers."""
    return aggregate_maps(layer_maps, size, mode="bicubic", drop_lowest=True, clamp=True)[0]


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map becomes all zeros)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def image_maps(model, x0: torch.Tensor, caption: str, words: list[str], contexts: list[str], *, n_draws: int,
               sampler: LogSNRSampler, seed: int, item, batch_size: int, with_mi: bool = True) -> dict[str, np.ndarray]:
    """Latent-grid maps (n_words, h, w) of one image and caption: ``cmi`` (pixel-wise i^o, nats), ``cmi_s``
    (pixel-wise i^s), ``attention``, and with ``with_mi`` also ``mi``; totals ``cmi_nats`` (and ``mi_nats``)."""
    pairs = ([(w, "") for w in words] if with_mi else []) + [(caption, c) for c in contexts]
    with record_cross_attention(model) as rec:
        sc = score_item(model, x0, pairs, n_draws=n_draws, sampler=sampler, seed=seed, item=item,
                        batch_size=batch_size, pixelwise=True, recorder=rec, attention_prompt=caption)
    n = len(words) if with_mi else 0
    tokens = daam_map(sc.attention, tuple(x0.shape[-2:]))
    att = []
    for w in words:
        idx = word_token_indices(model.tokenizer, caption.lower() if model.kind == "shapes" else caption, w)
        if not idx:
            raise ValueError(f"sample {item!r}: word {w!r} has no token in caption {caption!r} within the text "
                             f"encoder's {model.tokenizer.model_max_length} tokens")
        att.append(tokens[idx].mean(0).numpy())
    io = sc.maps["i_o"]
    out = {"cmi": io[n:], "cmi_s": sc.maps["i_s"][n:], "attention": np.stack(att), "cmi_nats": sc.mean("i_o")[n:]}
    if with_mi:
        out.update(mi=io[:n], mi_nats=sc.mean("i_o")[:n])
    return out


def compute_maps(model, ds, rows: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler, seed: int,
                 batch_size: int = 256, progress: bool = True) -> dict[str, np.ndarray]:
    """Maps of every word row (in ``rows`` order), one estimator call per (image, caption)."""
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
                         sampler=sampler, seed=seed, item=sid, batch_size=batch_size)
        for k, v in out.items():
            maps.setdefault(k, []).extend(list(v))
        order.extend(g.index)
    pos = np.argsort(order)
    return {k: np.stack(v)[pos] for k, v in maps.items()}


def upsampled(maps: np.ndarray, resolution: int) -> np.ndarray:
    """(N, h, w) -> (N, R, R), bilinear."""
    t = torch.from_numpy(np.asarray(maps, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)[:, 0].numpy()


def ground_truth(ds, rows: pd.DataFrame, resolution: int) -> np.ndarray:
    """(N, R, R) bool masks of the rows' objects on the model's input grid."""
    return np.stack([preprocess_mask(ds.object_mask(r.sample_id, r.objects), resolution)
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


def iou_curves(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """IoU (N, n_thresholds) of each normalised map thresholded at each threshold (``>=``) against its mask (maps and
    masks (N, R, R)); 1.0 where both are empty. Counted row by row: no (N, T, R, R) array."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if np.any(np.diff(thresholds) < 0):
        raise ValueError(f"thresholds must be ascending: {thresholds.tolist()}")
    out = np.empty((len(maps), len(thresholds)))
    for i, (m, gt) in enumerate(zip(maps, masks)):
        above, inter = threshold_counts(normalise(m), gt, thresholds)
        union = above + int(gt.sum()) - inter
        out[i] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out


def method_maps(maps: dict[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
    """Every map method's maps (N, R, R) on the input grid."""
    out = {m: upsampled(maps[m], resolution) for m in ("mi", "cmi", "attention")}
    out["attention+cmi"] = np.stack([(normalise(a) + normalise(c)) / 2 for a, c in zip(out["attention"],
                                                                                          out["cmi"])])
    return out


def row_curves(maps: dict[str, np.ndarray], masks_of: Callable[[int, int], np.ndarray], resolution: int,
               thresholds: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per row: the IoU curve (N, T) of every map method (``MAP_METHODS``) against its mask, and the mask's share of
    the image (N,), which is the ``whole_image`` IoU. ``maps`` holds the latent-grid maps (N, h, w) of ``mi``,
    ``cmi`` and ``attention``; ``masks_of(start, stop)`` gives the bool masks (stop - start, R, R) of those rows.
    Maps are upsampled and masks built ``chunk_rows`` rows at a time: memory grows with the chunk, not with N."""
    n = len(maps["cmi"])
    curves = {m: np.empty((n, len(thresholds))) for m in MAP_METHODS}
    whole = np.empty(n)
    for a in range(0, n, chunk_rows):
        b = min(n, a + chunk_rows)
        masks = masks_of(a, b)
        whole[a:b] = masks.reshape(b - a, -1).mean(1)
        for m, v in method_maps({k: maps[k][a:b] for k in ("mi", "cmi", "attention")}, resolution).items():
            curves[m][a:b] = iou_curves(v, masks, thresholds)
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
    """(per-row IoU table, summary) from every row's IoU curves (method -> (N, T) at ``thresholds``) and mask share
    (N,): mIoU per method and word type at the held-out threshold, and the oracle."""
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
            line[f"{m}:oracle"] = float(c[sel].mean(0).max())
        summary.append(line)
    return per_row, pd.DataFrame(summary)


def evaluate(rows: pd.DataFrame, maps: dict[str, np.ndarray], masks: np.ndarray, *, calibration_split: str,
             seed: int, n_thresholds: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``evaluate_curves`` of latent-grid maps (N, h, w) against masks (N, R, R) held in memory."""
    thresholds = threshold_grid(n_thresholds)
    curves, whole = row_curves(maps, lambda a, b: masks[a:b], masks.shape[-1], thresholds)
    return evaluate_curves(rows, curves, whole, calibration_split=calibration_split, seed=seed,
                           thresholds=thresholds)
