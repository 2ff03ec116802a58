"""Word localization in resumable shards, and the join of the shards.

The word rows of a (model, data set) are split by image (every caption and word of an image in one shard: the
images whose rank among the sorted sample ids is the shard's number modulo the shard count, as ``aro.shard_of``).
``shard_plan`` counts each shard's rows for the memory requests. A shard job (``localize_shard``) computes the maps
of each image's rows and, against the masks, each row's IoU curve, appends the image as one record to
``<shard>.partial`` (``records``) and, restarted with the same settings (``records.shard_settings``, checked by
``records.check_partial``), skips the images that file holds; its output ``shard-<k>.npz`` holds per row (key
``row``: the row's position among the data set's word rows) the latent-grid maps and totals (``map_keys``), and with
masks the curves ``iou:<method>`` (rows, thresholds; ``iou:<method>:paper`` on the paper's grid) and ``whole`` (the
mask's share of the image). ``join_shards`` puts the
shards back in row order for ``evaluate_curves``: the join needs neither masks nor full-resolution maps.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .aro import shard_of
from .estimators import LogSNRSampler, require_unconditional
from .inputs import class_rows, word_rows
from .localize import compute_maps, ground_truth, row_curves, split_count, threshold_grid
from .memory import CHUNK_ROWS
from .records import append_record, check_partial, read_records, remove_partial, shard_settings

log = logging.getLogger(__name__)

#: the latent-grid maps and totals every row has (localization_maps.npz holds them, float32); ``map_keys`` adds
#: ``attention_itd`` (a model with text attention: not a class-conditional DiT), ``attention_ddim`` and the maps at
#: smaller draw counts where they were computed
MAP_KEYS = ("cmi", "cmi_s", "cmi_nats", "mi", "mi_nats")


def map_keys(arrays: dict) -> list[str]:
    """The map and total keys of a record, shard or joined set of arrays: ``MAP_KEYS``, then the optional maps
    (``attention_itd``, ``attention_ddim``, ``<map>@<n>``) it holds, in a fixed order."""
    extra = sorted(k for k in arrays if k in ("attention_itd", "attention_ddim") or (
        ":" not in k and split_count(k)[1] is not None))
    return list(MAP_KEYS) + extra


def rows_with_masks(ds, rows: pd.DataFrame) -> pd.DataFrame:
    """The word rows that name a mask (non-empty ``objects``) where the data set has masks; every row where it has
    none (maps only). A warning counts the rows left out; none left is a ValueError."""
    if ds.objects is None:
        return rows
    masked = rows["objects"].astype(str).str.strip() != ""
    if not masked.any():
        raise ValueError(f"data set {ds.name!r}: none of its {len(rows)} selected word rows names a mask (empty "
                         f"objects in words.csv): nothing to localize; infodecomp.maps draws maps without masks")
    if not masked.all():
        log.warning("%s: %d of %d word rows name no mask (empty objects in words.csv) and are left out of the "
                    "localization; infodecomp.maps draws maps of every word", ds.name, int((~masked).sum()), len(rows))
    return rows[masked]


def localize_rows(ds, localize: dict, skipped=(), class_labels: bool = False) -> pd.DataFrame:
    """The word rows of the ``infodecomp.localize`` section's calibration and evaluation splits that have a mask
    (``rows_with_masks``), less those of the ``skipped`` images (the plan's unreadable ones; index: the row's
    position, the key every shard and the join use). ``class_labels`` (a class-conditional model): one row per
    image, its class against the null class (``inputs.class_rows``)."""
    splits = list(dict.fromkeys([localize["calibration_split"], localize["split"]]))
    rows = rows_with_masks(ds, word_rows(ds, splits, localize["max_images"], need_masks=False))
    if class_labels:
        rows = class_rows(ds, rows)
    return rows[~rows["sample_id"].astype(str).isin(set(skipped))].reset_index(drop=True)


def shard_plan(rows: pd.DataFrame, n_shards: int) -> dict:
    """Rows, images and the most words of one (image, caption) of every shard: what the jobs' memory requests
    read (``info.memory``)."""
    shards = []
    for k in range(n_shards):
        mine = shard_of(rows, k, n_shards)
        words = mine.groupby(["sample_id", "caption"]).size()
        shards.append({"shard": k, "rows": len(mine), "images": int(mine["sample_id"].nunique()),
                       "max_words_per_caption": int(words.max()) if len(words) else 0})
    return {"n_rows": len(rows), "n_images": int(rows["sample_id"].nunique()), "n_shards": n_shards,
            "shards": shards}


def planned_shard(rows: pd.DataFrame, shard: int, plan: dict, plan_path) -> pd.DataFrame:
    """The rows of shard ``shard``, checked against the plan (a plan older than the data set names its file)."""
    mine = shard_of(rows, shard, plan["n_shards"])
    if len(rows) != plan["n_rows"] or len(mine) != plan["shards"][shard]["rows"]:
        raise ValueError(f"{plan_path}: plans {plan['n_rows']} word rows, shard {shard} {plan['shards'][shard]['rows']}"
                         f"; the data set now gives {len(rows)} and {len(mine)}: delete the plan to make it again")
    return mine


def image_record(model, ds, rows: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler, seed: int, batch_size: int,
                 thresholds: np.ndarray | None, chunk_rows: int = CHUNK_ROWS, counts=(),
                 ddim_steps: int = 0) -> dict[str, np.ndarray]:
    """One image's rows: their keys, maps (``counts``, ``ddim_steps``: ``localize.image_maps``) and (``thresholds``
    given: the data set has masks) IoU curves."""
    rows = rows.sort_index()  # compute_maps returns the maps in index order
    maps = compute_maps(model, ds, rows, n_draws=n_draws, sampler=sampler, seed=seed, batch_size=batch_size,
                        progress=False, counts=counts, ddim_steps=ddim_steps)
    out = {"row": rows.index.to_numpy(np.int64), "sample_id": rows["sample_id"].to_numpy(str),
           "word": rows["word"].to_numpy(str), **{k: maps[k].astype(np.float32) for k in map_keys(maps)}}
    if thresholds is not None:
        masks_of = lambda a, b: ground_truth(ds, rows.iloc[a:b], model.resolution, model.geometry)  # noqa: E731
        curves, whole = row_curves(maps, masks_of, model.resolution, thresholds, chunk_rows)
        out.update({f"iou:{m}": c for m, c in curves.items()}, whole=whole)
    return out


def stack_records(records: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Records (or shards) joined into one set of arrays, in row order."""
    if not records:
        return {"row": np.zeros(0, np.int64), "sample_id": np.zeros(0, str), "word": np.zeros(0, str)}
    joined = {k: np.concatenate([r[k] for r in records]) for k in records[0]}
    order = np.argsort(joined["row"], kind="stable")
    return {k: v[order] for k, v in joined.items()}


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz written under a temporary name, then moved into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def localize_shard(model, ds, rows: pd.DataFrame, out_path: str | Path, *, n_draws: int, sampler: LogSNRSampler,
                   seed: int, n_thresholds: int, batch_size: int = 256, chunk_rows: int = CHUNK_ROWS,
                   progress: bool = True, identity: dict | None = None, score_masks: bool = True, counts=(),
                   ddim_steps: int = 0) -> dict[str, np.ndarray]:
    """Maps and, when the data set has masks (and ``score_masks``), IoU curves of every row of ``rows`` (one shard's,
    indexed by row position) into ``out_path`` (.npz), image by image through ``<out_path>.partial``: a restarted
    job resumes from it when it was made with the same settings (``records.shard_settings``; ``identity``: what
    else the numbers depend on, the job's ``records.job_identity``), and raises a ValueError naming both settings
    when not. ``counts`` (smaller draw counts whose maps are kept too) and ``ddim_steps`` (the DDIM-inversion
    attention baseline, 0: off): ``localize.image_maps``."""
    from tqdm import tqdm

    require_unconditional(model)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    masks = score_masks and ds.objects is not None
    more = {"counts": sorted(int(c) for c in counts if int(c) < n_draws), "ddim_steps": int(ddim_steps)}
    check_partial(partial, shard_settings(model, rows, n_draws=n_draws, sampler=sampler, seed=seed,
                                          n_thresholds=n_thresholds if masks else None, identity=identity, **more))
    finished = {str(r["sample_id"][0]) for r in read_records(partial)}
    if finished:
        log.info("resuming %s: %d images already localized", partial, len(finished))
    thresholds = threshold_grid(n_thresholds) if masks else None
    by_image = dict(tuple(rows.groupby("sample_id", sort=False)))
    todo = [s for s in sorted(by_image) if s not in finished]
    for sid in tqdm(todo, desc="localized images", disable=not progress, mininterval=5):
        append_record(partial, image_record(model, ds, by_image[sid], n_draws=n_draws, sampler=sampler, seed=seed,
                                            batch_size=batch_size, thresholds=thresholds, chunk_rows=chunk_rows,
                                            counts=counts, ddim_steps=ddim_steps))
    result = stack_records(read_records(partial))
    if thresholds is not None:
        result["thresholds"] = thresholds
    write_npz(out_path, result)
    remove_partial(partial)
    return result


def write_maps(path: str | Path, rows: pd.DataFrame, joined: dict[str, np.ndarray]) -> None:
    """The maps file of word rows (localization_maps.npz, word_maps.npz), compressed: per row its ``sample_id``,
    ``word`` and ``word_type``, and its latent-grid maps and totals (``map_keys``, from ``joined`` in row order)."""
    np.savez_compressed(path, sample_id=rows["sample_id"].to_numpy(str), word=rows["word"].to_numpy(str),
                        word_type=rows["word_type"].to_numpy(str), **{k: joined[k] for k in map_keys(joined)})


def curves_of(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The IoU curves of a shard or of joined shards, by method (``iou:<method>`` keys: ``evaluate_curves``'s
    input)."""
    return {k[len("iou:"):]: v for k, v in arrays.items() if k.startswith("iou:")}


def join_shards(paths: list[str | Path], rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The shards' arrays in row order, checked to hold every row of ``rows`` once (a shard made from another
    selection of rows is named with the first row that differs)."""
    shards = []
    thresholds = None
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            shard = {k: z[k] for k in z.files}
        if "thresholds" in shard:
            if thresholds is not None and not np.array_equal(thresholds, shard["thresholds"]):
                raise ValueError(f"{path}: thresholds differ from the other shards' ({len(shard['thresholds'])} vs "
                                 f"{len(thresholds)}): remake the shards")
            thresholds = shard.pop("thresholds")
        if len(shard["row"]):
            shards.append(shard)
    joined = stack_records(shards)
    expected = pd.DataFrame({"row": rows.index, "sample_id": rows["sample_id"].astype(str), "word": rows["word"]})
    got = pd.DataFrame({k: joined[k] for k in ("row", "sample_id", "word")})
    if len(got) != len(expected) or not (got.to_numpy() == expected.to_numpy()).all():
        bad = next((i for i in range(min(len(got), len(expected)))
                    if tuple(got.iloc[i]) != tuple(expected.iloc[i])), min(len(got), len(expected)))
        want = tuple(expected.iloc[bad]) if bad < len(expected) else "no row"
        have = tuple(got.iloc[bad]) if bad < len(got) else "no row"
        raise ValueError(f"shards {[str(p) for p in paths]} hold {len(got)} rows, the data set's selection "
                         f"{len(expected)}; first difference at position {bad}: expected (row, sample_id, word) "
                         f"{want}, found {have}")
    if thresholds is not None:
        joined["thresholds"] = thresholds
    return joined
