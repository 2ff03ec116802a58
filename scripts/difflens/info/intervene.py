"""Prompt intervention: invert a real image under its caption, regenerate it with a word omitted or swapped, and
ask which map (CMI or attention) predicts where the image changed.

The probability-flow ODE is solved in ``xbar = x_t / sqrt(abar_t)`` against ``sigma_t = sqrt(1 / abar_t - 1)``,
where ``d xbar / d sigma = eps_hat(x_t, t | prompt)``: an Euler step is exactly a DDIM step (eta 0), and ``heun``
adds the second-order correction (Kong et al. used Heun). No guidance: inversion and regeneration use the plain
conditional prediction, so regenerating under the caption itself reconstructs the image, and the change a word makes
is measured against that reconstruction (the per-pixel squared difference, summed over latent channels).

Correlations (Pearson): at image level across items (total change vs total CMI / total attention), at pixel level
within each item (change map vs CMI map), averaged over the items where it is defined (a constant map has none);
95% bootstrap intervals over items (percentiles of ``n_boot`` seeded resamples, no further scaling). Every row of one
edit kind uses the same resamples.

Mask baselines (``MASK_BASELINES``): a map that knows where the objects are but nothing about the model.
``object_mask`` is the edited word's own object(s) (words.csv ``objects``), ``all_objects_mask`` every object
objects.csv lists for the image; each is the share of a latent pixel the mask covers (the mask on the model's input
grid, area-averaged onto the latent grid). Used as predictors like CMI, so at image level a baseline is the mask's
area (its latent pixels, summed shares) correlated across items with the total change. They exist only when the data
set has objects.csv and every edited word names its objects; otherwise the table has no mask rows (not NaN rows).

The table (``correlations``): columns edit, predictor, level, n, pearson, ci_low, ci_high. ``predictor`` is a map
(``cmi``, ``attention``, ``object_mask``, ``all_objects_mask``): ``pearson`` is its correlation with the change.
``predictor`` ``<map>-<baseline>`` (``cmi-object_mask``, ...; every non-mask map against every baseline) is a
paired difference: ``pearson`` is r(map) - r(baseline), and its interval is the percentile interval of that
difference over the same resamples (each resample scores both maps on the same items), so an interval above 0 says
the map predicts the change better than the mask does.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..models.sampling import sampling_timesteps
from .estimators import LogSNRSampler, denoise_rows, require_unconditional
from .inputs import encode_samples, preprocess_mask
from .localize import image_maps

SOLVERS = ("ddim", "heun")
#: the maps that know where the objects are and nothing about the model (module docstring)
MASK_BASELINES = ("object_mask", "all_objects_mask")


def ode_path(model, x: torch.Tensor, prompts: list[str], timesteps: torch.Tensor, solver: str = "ddim",
             batch_size: int = 256) -> torch.Tensor:
    """Carry latents ``x`` (B, C, h, w), given at ``timesteps[0]``, to ``timesteps[-1]`` along the ODE under
    ``prompts`` (one per row). Increasing timesteps invert (image -> noise), decreasing ones generate. A clean image
    enters (and leaves) at timestep 0, whose noise level (sigma about 0.01) is the path's end."""
    if solver not in SOLVERS:
        raise ValueError(f"intervention solver {solver!r} is not one of {list(SOLVERS)}")
    abar = model.alphas_cumprod.to(torch.float64)
    cond = model.encode_text(prompts)

    def eps(xbar, t):
        a = float(abar[int(t)])
        x_t = (xbar * a ** 0.5).float()
        tt = torch.full((len(x_t),), int(t), dtype=torch.long)
        return denoise_rows(model, x_t, tt, cond, batch_size).double()

    sigma = lambda t: float((1 / abar[int(t)] - 1) ** 0.5)  # noqa: E731
    xbar = x.double() / float(abar[int(timesteps[0])]) ** 0.5
    for t0, t1 in zip(timesteps[:-1], timesteps[1:]):
        d = sigma(t1) - sigma(t0)
        e0 = eps(xbar, t0)
        nxt = xbar + d * e0
        if solver == "heun":
            nxt = xbar + d * (e0 + eps(nxt, t1)) / 2
        xbar = nxt
    return (xbar * float(abar[int(timesteps[-1])]) ** 0.5).float()


def swap_word(caption: str, word: str, swaps: dict[str, str]) -> str | None:
    """The caption with every whole-word ``word`` replaced by ``swaps[word]`` (None when the table has no entry)."""
    new = swaps.get(word) or swaps.get(word.lower())
    if not new:
        return None
    return re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", new, caption, flags=re.IGNORECASE)


def edits_of(rows: pd.DataFrame, swaps: dict[str, str], words_per_image: int) -> pd.DataFrame:
    """The edits to make: for each image, its first ``words_per_image`` word rows, each omitted (the context) and,
    when the swap table names it, swapped. Each edit keeps its row's ``objects`` ("" when ``rows`` has none)."""
    out = []
    for sid, g in rows.groupby("sample_id", sort=False):
        for r in g.head(words_per_image).itertuples():
            row = {"sample_id": sid, "word": r.word, "word_type": r.word_type, "caption": r.caption,
                   "context": r.context, "objects": str(getattr(r, "objects", ""))}
            out.append({**row, "edit": "omit", "prompt": r.context})
            swapped = swap_word(r.caption, r.word, swaps)
            if swapped is not None:
                out.append({**row, "edit": "swap", "prompt": swapped})
    if not out:
        raise ValueError("no word rows to edit")
    return pd.DataFrame(out)


def change_maps(model, latents_of: dict, edits: pd.DataFrame, *, steps: int, solver: str, batch_size: int = 256,
                progress: bool = True) -> np.ndarray:
    """(n_edits, h, w) squared change (channels summed) of each edit's regeneration against the image's own
    reconstruction, all images inverted and regenerated in batches along the same ODE grid (``latents_of``: sample
    id -> latents (C, h, w))."""
    from tqdm import tqdm

    grid = sampling_timesteps(model.num_train_timesteps, steps + 1).flip(0)  # 0 .. T-1, increasing
    images = list(dict.fromkeys(edits["sample_id"]))
    captions = edits.drop_duplicates("sample_id").set_index("sample_id")["caption"]
    out = np.zeros((len(edits), *latents_of[images[0]].shape[-2:]))
    chunk = max(1, batch_size // 4)
    for s in tqdm(range(0, len(images), chunk), desc="invert + regenerate", disable=not progress):
        ids = images[s:s + chunk]
        x0 = torch.stack([latents_of[i] for i in ids])
        noise = ode_path(model, x0, [captions[i] for i in ids], grid, solver, batch_size)
        sub = edits[edits["sample_id"].isin(ids)]
        at = {sid: k for k, sid in enumerate(ids)}
        rows = [at[sid] for sid in ids] + [at[sid] for sid in sub["sample_id"]]
        prompts = [captions[i] for i in ids] + list(sub["prompt"])
        regen = ode_path(model, noise[rows], prompts, grid.flip(0), solver, batch_size)
        recon, edited = regen[:len(ids)], regen[len(ids):]
        change = ((edited - recon[[at[sid] for sid in sub["sample_id"]]]) ** 2).sum(1)
        out[np.flatnonzero(edits["sample_id"].isin(ids).to_numpy())] = change.numpy()
    return out


def word_maps(model, latents_of: dict, edits: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler, seed: int,
              batch_size: int = 256, progress: bool = True) -> dict[str, np.ndarray]:
    """CMI (pixel-wise i^o) and attention maps of each edit's word, (n_edits, h, w), from one estimator call per
    image."""
    from tqdm import tqdm

    words = edits.drop_duplicates(["sample_id", "word"])
    got = {}
    for sid, g in tqdm(list(words.groupby("sample_id", sort=False)), desc="CMI maps", disable=not progress):
        maps = image_maps(model, latents_of[sid], g["caption"].iloc[0], list(g["word"]), list(g["context"]),
                          n_draws=n_draws, sampler=sampler, seed=seed, item=sid, batch_size=batch_size,
                          with_mi=False)
        for k, w in enumerate(g["word"]):
            got[(sid, w)] = {"cmi": maps["cmi"][k], "attention": maps["attention"][k]}
    return {m: np.stack([got[(r.sample_id, r.word)][m] for r in edits.itertuples()]) for m in ("cmi", "attention")}


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def bootstrap_ci(n: int, stat, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of ``stat(indices)`` over ``n_boot`` resamples of ``n`` items."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    vals = vals[np.isfinite(vals)]
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if len(vals) else (np.nan, np.nan)


def latent_mask(mask: np.ndarray, resolution: int, grid: tuple[int, int]) -> np.ndarray:
    """The share (0..1) of each latent pixel of ``grid`` that a bool image mask (H, W) covers: the mask on the
    model's input grid (``preprocess_mask``), area-averaged onto the latent grid."""
    m = torch.from_numpy(preprocess_mask(mask, resolution).astype(np.float32))[None, None]
    return F.interpolate(m, size=grid, mode="area")[0, 0].numpy().astype(np.float64)


def why_no_masks(ds, edits: pd.DataFrame) -> str:
    """Why the edits get no mask baselines ("" when they get them): the data set has no objects.csv, or an edited
    word (the first is named) has no ``objects``."""
    if ds.objects is None:
        return f"data set {ds.name!r} has no objects.csv"
    empty = edits[edits["objects"].astype(str).str.strip() == ""]
    if len(empty):
        return (f"{len(empty)} of {len(edits)} edits name no object in words.csv (the first: sample "
                f"{empty['sample_id'].iloc[0]!r}, word {empty['word'].iloc[0]!r})")
    return ""


def mask_maps(ds, edits: pd.DataFrame, resolution: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """The mask baselines (``MASK_BASELINES``) of every edit, (n_edits, *grid) each: ``object_mask`` the edited
    word's objects (the edit's ``objects``), ``all_objects_mask`` every object of its image. Empty (no baselines)
    when ``why_no_masks`` gives a reason, so that no edit is left out of them."""
    if why_no_masks(ds, edits):
        return {}
    whole = {sid: latent_mask(ds.object_mask(sid), resolution, grid) for sid in dict.fromkeys(edits["sample_id"])}
    own = [latent_mask(ds.object_mask(r.sample_id, r.objects), resolution, grid) for r in edits.itertuples()]
    return {"object_mask": np.stack(own), "all_objects_mask": np.stack([whole[s] for s in edits["sample_id"]])}


def level_statistics(change: np.ndarray, maps: np.ndarray) -> dict[str, tuple[float, object]]:
    """Per level, (the correlation of ``maps`` with ``change`` over all items, the same statistic of a resample
    as a function of its item indices): ``image`` the Pearson correlation across items of the totals, ``pixel`` the
    mean over items of each item's pixel-level correlation (items where it is undefined are left out)."""
    n = len(change)
    tot_c, tot_p = change.reshape(n, -1).sum(1), maps.reshape(n, -1).sum(1)
    per_item = np.array([pearson(c.ravel(), p.ravel()) for c, p in zip(change, maps)])

    def image(i):
        return pearson(tot_c[i], tot_p[i])

    def pixel(i):
        kept = per_item[i][np.isfinite(per_item[i])]
        return float(kept.mean()) if len(kept) else float("nan")

    every = np.arange(n)
    return {"image": (image(every), image), "pixel": (pixel(every), pixel)}


def paired(stat, baseline):
    """The statistic of a resample minus the baseline's statistic of the same resample."""
    return lambda i: stat(i) - baseline(i)


def difference_name(predictor: str, baseline: str) -> str:
    """The predictor name of the paired-difference rows of ``predictor`` against ``baseline``."""
    return f"{predictor}-{baseline}"


def correlations(edits: pd.DataFrame, change: np.ndarray, predictors: dict[str, np.ndarray], *, n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Image- and pixel-level Pearson correlations of the change with each predictor map, per edit kind, with
    95% bootstrap intervals over items; and for every predictor that is not a mask baseline, its paired
    difference with each baseline in ``predictors`` (``MASK_BASELINES``; the table layout is in the module
    docstring)."""
    lines = []
    baselines = [b for b in MASK_BASELINES if b in predictors]
    scored = [m for m in predictors if m not in MASK_BASELINES]
    for edit in sorted(edits["edit"].unique()):
        sel = np.flatnonzero((edits["edit"] == edit).to_numpy())
        stats = {name: level_statistics(change[sel], maps[sel]) for name, maps in predictors.items()}
        pairs = [(m, stats[m], None) for m in scored + baselines] + \
            [(difference_name(m, b), stats[m], stats[b]) for m in scored for b in baselines]
        for name, own, base in pairs:
            for level, (value, stat) in own.items():
                if base is not None:
                    value, stat = value - base[level][0], paired(stat, base[level][1])
                lo, hi = bootstrap_ci(len(sel), stat, n_boot, seed)
                lines.append({"edit": edit, "predictor": name, "level": level, "n": len(sel), "pearson": value,
                              "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(lines)


def run_intervention(model, ds, rows: pd.DataFrame, *, swaps: dict[str, str], words_per_image: int, steps: int,
                     solver: str, n_draws: int, sampler: LogSNRSampler, seed: int, batch_size: int = 256,
                     n_boot: int = 1000, progress: bool = True):
    """(edits table with totals, change maps, predictor maps (CMI, attention and, where the data set has the masks,
    the mask baselines), correlation table)."""
    require_unconditional(model)
    edits = edits_of(rows, swaps, words_per_image)
    images = list(dict.fromkeys(edits["sample_id"]))
    latents_of = dict(zip(images, encode_samples(model, ds, images)))  # each image encoded once, for both parts
    change = change_maps(model, latents_of, edits, steps=steps, solver=solver, batch_size=batch_size,
                         progress=progress)
    preds = word_maps(model, latents_of, edits, n_draws=n_draws, sampler=sampler, seed=seed, batch_size=batch_size,
                      progress=progress)
    preds.update(mask_maps(ds, edits, model.resolution, tuple(change.shape[-2:])))
    edits = edits.assign(change_total=change.reshape(len(edits), -1).sum(1),
                         cmi_nats=preds["cmi"].reshape(len(edits), -1).sum(1),
                         attention_total=preds["attention"].reshape(len(edits), -1).sum(1))
    return edits, change, preds, correlations(edits, change, preds, n_boot=n_boot, seed=seed)
