"""Steer the chosen latents of one SAE on a set of images, measure what each edit did, and hold the change against
the information the latent's word carries.

For each source (``generate.SOURCES``) every image is regenerated unedited and under each edit (``choose.edits_for``).
Per (latent, edit) the tables hold the change of every image (``effects.change_maps``), on the shapes world its
attributes read back (``effects.attribute_effects``), and the Pearson correlation (95% bootstrap interval over images,
``info.intervene``'s statistics) of the change map with two predictor maps of the unedited image:

* ``cmi``: the pixel-wise CMI (i^o) of the latent's word given the rest of the caption that names it
  (``choose.caption_naming``), from the information stage's estimator; text models and images with a caption only;
* ``heat``: the latent's heat map (its encoder response at each position of the layer's map at the SAE's timestep,
  with the extraction's seeded noise), upsampled to the latent grid.

At ``image`` level the correlation runs across images (total change against total predictor), at ``pixel`` level
within each image (averaged over images). Rows with no defined value are left out, and ``n`` counts the images used.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.common import remove_word
from ..extract.noise import sample_noise
from ..info.inputs import encode_samples
from ..info.intervene import bootstrap_ci, level_statistics
from ..info.localize import image_maps
from ..models.catalog import CLASS_KINDS
from ..sae.model import latent_response
from .choose import caption_naming, word_column
from .effects import attribute_effects, change_maps, rates, target_kind, to_uint8
from .generate import regenerate, starting_points
from .splice import SteerError, spliced

PROMPTS = ("empty", "caption")
#: the shapes world's data sets (dataset.json ``source``): their edited images are read back by the renderer
SHAPES_SOURCE = "difflens shapes world"


def prompts_for(model, rows: pd.DataFrame, mode: str) -> list[str]:
    """The prompt of each image: "" (``empty``), or its caption (a class model: its class name)."""
    if mode not in PROMPTS:
        raise ValueError(f"steer.prompt {mode!r} is not one of {list(PROMPTS)}")
    if mode == "empty":
        return [""] * len(rows)
    return [str(v) for v in rows["label_name" if model.kind in CLASS_KINDS else "caption"]]


def heat_maps(model, sae, layer: str, latents: list[int], x0: torch.Tensor, ids: list[str], prompts: list[str], *,
              timestep: int, seed: int, batch_size: int) -> dict[int, np.ndarray]:
    """{latent: (B, h, w)} its encoder response over the layer's map of each image at ``timestep`` (the extraction's
    noise draw 0), bilinearly upsampled to the latent grid of ``x0`` (B, C, h, w)."""
    out = {j: [] for j in latents}
    for a in range(0, len(x0), batch_size):
        x, sid = x0[a:a + batch_size], ids[a:a + batch_size]
        x_t = model.add_noise(x, sample_noise(tuple(x.shape[1:]), seed, sid, timestep, 0), torch.full(
            (len(x),), timestep, dtype=torch.long))
        maps = model.capture(x_t, timestep, model.encode_text(prompts[a:a + batch_size]), [layer])[layer].float()
        b, c, h, w = maps.shape
        vectors = maps.reshape(b, c, h * w).transpose(1, 2).reshape(-1, c)
        for j in latents:
            heat = latent_response(sae, vectors, j).view(b, 1, h, w).cpu()
            out[j].append(F.interpolate(heat, size=tuple(x0.shape[-2:]), mode="bilinear", align_corners=False)[:, 0])
    return {j: torch.cat(v).numpy().astype(np.float64) for j, v in out.items()}


def cmi_maps(model, x0: torch.Tensor, rows: pd.DataFrame, word: str, column: str | None, *, n_draws: int,
             sampler, seed: int, batch_size: int) -> tuple[np.ndarray, list[str]]:
    """((B, h, w) the word's pixel-wise CMI (i^o) in the caption that names it, NaN for an image with none; those
    captions, "" for none)."""
    out = np.full((len(x0), *x0.shape[-2:]), np.nan)
    captions = []
    for i, row in enumerate(rows.to_dict("records")):
        caption = caption_naming(row, word, column) or ""
        captions.append(caption)
        if caption:
            maps = image_maps(model, x0[i], caption, [word], [remove_word(caption, word)], n_draws=n_draws,
                              sampler=sampler, seed=seed, item=row["sample_id"], batch_size=batch_size, with_mi=False)
            out[i] = maps["cmi"][0]
    return out, captions


def require_steps(grid, t_range) -> None:
    """A SteerError when no regeneration step starts inside ``t_range``: the edit would never be on."""
    from .generate import segments

    if not any(on for _, _, on in segments(grid, tuple(t_range))):
        raise SteerError(f"steer.t_range {list(t_range)}: no step of the regeneration starts inside it (its steps "
                         f"start at timesteps {[int(t) for t in grid[:-1]]}), so no edit would ever be on")


def correlation_rows(change: np.ndarray, predictor: np.ndarray, *, n_boot: int, seed: int) -> list[dict]:
    """Image- and pixel-level Pearson correlations (``level_statistics``) of the change maps with a predictor's
    maps over the images whose predictor is defined, with 95% bootstrap intervals over those images."""
    keep = np.flatnonzero(np.isfinite(predictor).all(axis=(1, 2)))
    if len(keep) < 2:
        return [{"level": lv, "n": len(keep), "pearson": np.nan, "ci_low": np.nan, "ci_high": np.nan}
                for lv in ("image", "pixel")]
    stats = level_statistics(change[keep], predictor[keep])
    return [{"level": level, "n": len(keep), "pearson": value, "ci_low": lo, "ci_high": hi}
            for level, (value, stat) in stats.items() for lo, hi in [bootstrap_ci(len(keep), stat, n_boot, seed)]]


def run_steering(model, sae, ds, rows: pd.DataFrame, chosen: pd.DataFrame, edits: list, *, layer: str, input: str,
                 timestep: int, cfg: dict, sampler, n_draws: int, seed: int, show: int = 4,
                 progress: bool = True, shared: dict | None = None) -> dict:
    """Every edit of ``edits`` on the images ``rows`` (module docstring). ``chosen``: ``choose.choose_latents``;
    ``cfg``: the steer settings (sources, steps, solver, t_range, prompt, guidance, weighting, move_px, n_boot,
    batch_size). Returns {"items", "effects", "correlations": tables; "images": {name: (m, H, W, 3) uint8} of the
    first ``show`` images (``<source>/unedited``, ``<source>/<latent>/<edit label>``)}. What depends on the model,
    images and words only (the image latents, each source's start and unedited regeneration, each word's CMI maps)
    is kept in ``shared``, so that a second run on the same images (the control's) reuses it. Every predictor is
    read with no edit active."""
    from tqdm import tqdm

    ids = [str(s) for s in rows["sample_id"]]
    steered = chosen[["latent", "word", "attribute"]].astype({"latent": int, "word": str}).to_dict("records")
    unique = list(dict.fromkeys(edits))  # two words may share a latent (a control's): each edit runs once
    shapes = ds.meta.get("source") == SHAPES_SOURCE
    prompts = prompts_for(model, rows, cfg["prompt"])
    shared = {} if shared is None else shared
    if "x0" not in shared:
        shared["x0"] = encode_samples(model, ds, ids)
    x0 = shared["x0"]
    bs, latents = cfg["batch_size"], list(dict.fromkeys(r["latent"] for r in steered))
    items, corr, images = [], [], {}
    run = dict(t_range=tuple(cfg["t_range"]), solver=cfg["solver"], batch_size=bs, guidance=cfg["guidance"])
    with spliced(model, sae, layer, input, cfg["weighting"]) as splice:
        for source in cfg["sources"]:
            splice.edit = None  # the unedited regeneration and every predictor: no edit
            if source not in shared:
                start, grid = starting_points(model, source, x0, ids, prompts, steps=cfg["steps"], seed=seed,
                                              solver=cfg["solver"], batch_size=bs)
                require_steps(grid, cfg["t_range"])
                base = regenerate(model, start, prompts, grid, splice=splice, **run)
                shared[source] = start, grid, base, to_uint8(model.decode_latents(base))
            start, grid, base, base_img = shared[source]
            images[f"{source}/unedited"] = base_img[:show]
            ref = x0 if source == "inverted" else base  # the image the predictors read
            heat = heat_maps(model, sae, layer, latents, ref, ids, prompts, timestep=timestep, seed=seed,
                             batch_size=bs)
            for r in steered:
                if source == "inverted" and model.kind not in CLASS_KINDS and (source, r["word"]) not in shared:
                    shared[source, r["word"]] = cmi_maps(
                        model, ref, rows, r["word"], word_column(rows, r["word"], r["attribute"]), n_draws=n_draws,
                        sampler=sampler, seed=seed, batch_size=bs)
            regenerated = {}
            for edit in tqdm(unique, desc=f"steer ({source})", disable=not progress):
                splice.edit = edit
                out = regenerate(model, start, prompts, grid, splice=splice, **run)
                img = to_uint8(model.decode_latents(out))
                regenerated[edit] = (img if shapes else img[:show], change_maps(out, base))  # all: to read back
            splice.edit = None
            for r in steered:
                j, word = r["latent"], r["word"]
                cmi, caption = shared.get((source, word), (None, None))
                for edit in (e for e in unique if e.latent == j):
                    img, change = regenerated[edit]
                    name = f"{source}/{j}/{edit.label}"
                    images[name] = img[:show]
                    part = pd.DataFrame({"source": source, "latent": j, "word": word, "edit": edit.label,
                                         "kind": edit.kind, "value": edit.value, "sample_id": ids,
                                         "change_total": change.reshape(len(ids), -1).sum(1),
                                         "heat_total": heat[j].reshape(len(ids), -1).sum(1)})
                    if cmi is not None:
                        part["cmi_caption"] = caption
                        part["cmi_total"] = cmi.reshape(len(ids), -1).sum(1)
                    if shapes and target_kind(word):
                        part = pd.concat([part, attribute_effects(list(base_img), list(img), word,
                                                                  move_px=cfg["move_px"])], axis=1)
                    items.append(part)
                    predictors = {"heat": heat[j], **({"cmi": cmi} if cmi is not None else {})}
                    for pred, maps in predictors.items():
                        corr += [{"source": source, "latent": j, "word": word, "edit": edit.label,
                                  "predictor": pred, **c}
                                 for c in correlation_rows(change, maps, n_boot=cfg["n_boot"], seed=seed)]
    items = pd.concat(items, ignore_index=True)
    keys = ["source", "latent", "word", "edit", "kind", "value"]
    effects = items.groupby(keys, sort=False)["change_total"].mean().rename("mean_change").reset_index()
    if "success" in items.columns:
        scored = items[items["success"].notna()]
        effects = effects.merge(rates(scored, keys), on=keys, how="left")
    return {"items": items, "effects": effects, "correlations": pd.DataFrame(corr), "images": images}
