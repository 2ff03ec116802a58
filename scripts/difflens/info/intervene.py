"""Prompt intervention (Kong et al.'s Table 4): invert a real image under its caption, regenerate it with a word
omitted or swapped, and ask which map predicts where the image changed.

Inversion and regeneration follow the probability-flow ODE (``ode.ode_path``; Kong et al. used Heun) without
guidance, so regenerating under the caption itself reconstructs the image, and the change an edit makes is measured
against that reconstruction (the per-pixel squared difference, summed over latent channels). Each (image, caption)
is inverted under its own caption: the word rows of one image may come from different captions (COCO-IT).

Edits: ``omit`` replaces the word by ``"_"`` (``omit: placeholder``, the public code's ``image_edit.py``) or deletes
it (``omit: delete``, the words.csv context); ``swap`` replaces it by its entry in the swap table.

Predictors (``PREDICTORS``), each a map per edit on the latent grid:

* ``cmi``: pixel-wise i^o of the caption against the edit's prompt: for an omit edit the word's CMI given the rest
  of the caption; for a swap edit the public code's ``cmi_pixel_swap`` (caption against swapped caption);
* ``cmi_s``: the same with i^s. The public code's image-level score is the i^s total (``ll_ratio_pixel.sum()``) and
  its pixel-level map i^o: Table 4's image row is ``cmi_s``, its pixel row ``cmi``; both are reported at both levels;
* ``attention_regen``: DAAM of the word traced while regenerating the image under its caption from the inversion
  (the paper's attention "during generation", Table 4's attention row), raw (not normalised);
* ``attention_itd``: DAAM of the word on the estimator's own draws (as in the localization).

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
(``PREDICTORS``, ``object_mask``, ``all_objects_mask``): ``pearson`` is its correlation with the change.
``predictor`` ``<map>-<baseline>`` (``cmi-object_mask``, ...; every non-mask map against every baseline) is a
paired difference: ``pearson`` is r(map) - r(baseline), and its interval is the percentile interval of that
difference over the same resamples (each resample scores both maps on the same items), so an interval above 0 says
the map predicts the change better than the mask does.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.common import replace_word
from ..models.attention import record_cross_attention
from .estimators import LogSNRSampler, require_text
from .inputs import encode_samples, preprocess_mask
from .localize import image_maps, word_tokens
from .ode import SOLVERS, daam_map, ode_grid, ode_path  # noqa: F401 (SOLVERS: re-exported)

#: the maps that know where the objects are and nothing about the model (module docstring)
MASK_BASELINES = ("object_mask", "all_objects_mask")


#: what the omit edit puts where the word was (infodecomp.intervene.omit: placeholder), as the public code does
PLACEHOLDER = "_"
#: how the omit edit removes the word (infodecomp.intervene.omit)
OMIT_MODES = ("placeholder", "delete")
#: the predictor maps of each edit (module docstring), besides the mask baselines
PREDICTORS = ("cmi", "cmi_s", "attention_regen", "attention_itd")


def swap_word(caption: str, word: str, swaps: dict[str, str]) -> str | None:
    """The caption with every whole-word ``word`` replaced by ``swaps[word]`` (None when the table has no entry)."""
    new = swaps.get(word) or swaps.get(word.lower())
    return replace_word(caption, word, new) if new else None


def omitted(caption: str, word: str, context: str, omit: str) -> str:
    """The omit edit's prompt: the caption with ``word`` replaced by ``PLACEHOLDER`` (``omit`` placeholder) or the
    word row's ``context`` (delete)."""
    if omit not in OMIT_MODES:
        raise ValueError(f"infodecomp.intervene.omit {omit!r} is not one of {list(OMIT_MODES)}")
    return replace_word(caption, word, PLACEHOLDER) if omit == "placeholder" else context



def edits_of(rows: pd.DataFrame, swaps: dict[str, str], words_per_image: int,
             omit: str = "placeholder") -> pd.DataFrame:
    """The edits to make: for each image, its first ``words_per_image`` word rows, each omitted (``omitted``) and,
    when the swap table names it, swapped; each edit under its own row's caption (an image's rows may come from
    different captions). Each edit keeps its row's ``objects`` ("" when ``rows`` has none)."""
    out = []
    for sid, g in rows.groupby("sample_id", sort=False):
        for r in g.head(words_per_image).itertuples():
            row = {"sample_id": sid, "word": r.word, "word_type": r.word_type, "caption": r.caption,
                   "context": r.context, "objects": str(getattr(r, "objects", ""))}
            out.append({**row, "edit": "omit", "prompt": omitted(r.caption, r.word, r.context, omit)})
            swapped = swap_word(r.caption, r.word, swaps)
            if swapped is not None:
                out.append({**row, "edit": "swap", "prompt": swapped})
    if not out:
        raise ValueError("no word rows to edit")
    return pd.DataFrame(out)


def change_maps(model, latents_of: dict, edits: pd.DataFrame, *, steps: int, solver: str, batch_size: int = 256,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(n_edits, h, w) each: the squared change (channels summed) of each edit's regeneration against the
    reconstruction of its (image, caption), and the edited word's DAAM map traced during that reconstruction (Kong
    et al.'s attention "during generation", ``attention_regen``). Every (image, caption) is inverted under its own
    caption and regenerated, in batches along the same ODE grid (``latents_of``: sample id -> latents (C, h, w))."""
    from tqdm import tqdm

    grid = ode_grid(model, steps)
    keys = list(dict.fromkeys(zip(edits["sample_id"], edits["caption"])))
    edit_keys = list(zip(edits["sample_id"], edits["caption"]))
    out = np.zeros((len(edits), *latents_of[keys[0][0]].shape[-2:]))
    att = np.zeros_like(out)
    chunk = max(1, batch_size // 4)
    for s in tqdm(range(0, len(keys), chunk), desc="invert + regenerate", disable=not progress):
        mine = keys[s:s + chunk]
        at = {k: i for i, k in enumerate(mine)}
        sel = np.flatnonzero([k in at for k in edit_keys])
        x0 = torch.stack([latents_of[sid] for sid, _ in mine])
        noise = ode_path(model, x0, [c for _, c in mine], grid, solver, batch_size)
        rows = list(range(len(mine))) + [at[edit_keys[i]] for i in sel]
        prompts = [c for _, c in mine] + list(edits["prompt"].iloc[sel])
        slots = torch.tensor(list(range(len(mine))) + [-1] * len(sel))
        # only the edited words' tokens are recorded (every slot keeps the union of the chunk's: a few, not 77)
        idx = {i: word_tokens(model, edits["caption"].iloc[i], edits["word"].iloc[i], edits["sample_id"].iloc[i])
               for i in sel}
        kept = sorted({j for v in idx.values() for j in v})
        with record_cross_attention(model, tokens_of_interest=kept, n_slots=len(mine)) as rec:
            regen = ode_path(model, noise[rows], prompts, grid.flip(0), solver, batch_size, rec, slots)
        tokens = daam_map(rec.maps, tuple(x0.shape[-2:]))
        recon, edited = regen[:len(mine)], regen[len(mine):]
        own = [at[edit_keys[i]] for i in sel]
        out[sel] = ((edited - recon[own]) ** 2).sum(1).numpy()
        for j, i in enumerate(sel):
            att[i] = tokens[own[j]][[kept.index(k) for k in idx[i]]].mean(0).float().cpu().numpy()
    return out, att


def word_maps(model, latents_of: dict, edits: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler, seed: int,
              batch_size: int = 256, progress: bool = True) -> dict[str, np.ndarray]:
    """Per edit (n_edits, h, w): the pixel-wise information of its caption against its edit's prompt, ``cmi``
    (i^o) and ``cmi_s`` (i^s) (for an omit edit the word's CMI given the rest of the caption; for a swap edit the
    public code's ``cmi_pixel_swap``), and ``attention_itd`` (the word's DAAM map on the estimator's draws); one
    estimator call per (image, caption): the localization's ``image_maps`` with the edits' prompts as the
    contexts."""
    from tqdm import tqdm

    got = {m: np.zeros((len(edits), *latents_of[edits["sample_id"].iloc[0]].shape[-2:])) for m in
           ("cmi", "cmi_s", "attention_itd")}
    groups = list(edits.reset_index(drop=True).groupby(["sample_id", "caption"], sort=False))
    for (sid, caption), g in tqdm(groups, desc="CMI maps", disable=not progress):
        maps = image_maps(model, latents_of[sid], caption, list(g["word"]), list(g["prompt"]), n_draws=n_draws,
                          sampler=sampler, seed=seed, item=sid, batch_size=batch_size, with_mi=False)
        for m in got:
            got[m][g.index] = maps[m]
    return got


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


def latent_mask(mask: np.ndarray, resolution: int, grid: tuple[int, int], geometry: str = "crop") -> np.ndarray:
    """The share (0..1) of each latent pixel of ``grid`` that a bool image mask (H, W) covers: the mask on the
    model's input grid (``preprocess_mask``), area-averaged onto the latent grid."""
    m = torch.from_numpy(preprocess_mask(mask, resolution, geometry).astype(np.float32))[None, None]
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


def mask_maps(ds, edits: pd.DataFrame, resolution: int, grid: tuple[int, int],
              geometry: str = "crop") -> dict[str, np.ndarray]:
    """The mask baselines (``MASK_BASELINES``) of every edit, (n_edits, *grid) each: ``object_mask`` the edited
    word's objects (the edit's ``objects``), ``all_objects_mask`` every object of its image. Empty (no baselines)
    when ``why_no_masks`` gives a reason, so that no edit is left out of them."""
    if why_no_masks(ds, edits):
        return {}
    whole = {sid: latent_mask(ds.object_mask(sid), resolution, grid, geometry)
             for sid in dict.fromkeys(edits["sample_id"])}
    own = [latent_mask(ds.object_mask(r.sample_id, r.objects), resolution, grid, geometry) for r in edits.itertuples()]
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
                     n_boot: int = 1000, progress: bool = True, omit: str = "placeholder"):
    """(edits table with totals, change maps, predictor maps (``PREDICTORS`` and, where the data set has the masks,
    the mask baselines), correlation table)."""
    require_text(model, "a prompt intervention")
    edits = edits_of(rows, swaps, words_per_image, omit)
    images = list(dict.fromkeys(edits["sample_id"]))
    latents_of = dict(zip(images, encode_samples(model, ds, images)))  # each image encoded once, for both parts
    change, regen_attention = change_maps(model, latents_of, edits, steps=steps, solver=solver,
                                          batch_size=batch_size, progress=progress)
    preds = word_maps(model, latents_of, edits, n_draws=n_draws, sampler=sampler, seed=seed, batch_size=batch_size,
                      progress=progress)
    preds["attention_regen"] = regen_attention
    preds = {m: preds[m] for m in PREDICTORS}
    preds.update(mask_maps(ds, edits, model.resolution, tuple(change.shape[-2:]), model.geometry))
    total = {f"{m}_total": preds[m].reshape(len(edits), -1).sum(1) for m in PREDICTORS}
    edits = edits.assign(change_total=change.reshape(len(edits), -1).sum(1), cmi_nats=total.pop("cmi_total"),
                         cmi_s_nats=total.pop("cmi_s_total"), **total)
    return edits, change, preds, correlations(edits, change, preds, n_boot=n_boot, seed=seed)
