"""Step 1 of extraction: one shard of a data set -> the model's latents, HDF5 (layout: ``difflens.extract.layout``).

Each image is read, preprocessed for the model (resized to its resolution through its geometry, crop or squash,
[-1, 1]) and encoded (VAE posterior mode x scaling factor, or the shapes model's space-to-depth). An unreadable image
keeps its row (NaN latents, ``valid`` False, ``skip_reason``); the rest goes on. Files are written atomically
(``h5io``).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..data.common import Dataset, DatasetError
from .h5io import atomic_h5, provenance, set_attrs, write_strings
from .layout import ShardPlan
from ..models.batching import HalvingBatcher

log = logging.getLogger(__name__)


def _row_columns(f: h5py.File, rows: pd.DataFrame, attributes: list[str]) -> None:
    """The row table: ids, splits, labels and the data set's attribute columns (group ``attributes``: integers as
    int64, anything else as strings)."""
    write_strings(f, "sample_id", rows["sample_id"])
    write_strings(f, "split", rows["split"])
    write_strings(f, "label_name", rows["label_name"])
    f.create_dataset("label", data=rows["label"].to_numpy(np.int64))
    group = f.create_group("attributes")
    for name in attributes:
        column = rows[name]
        if pd.api.types.is_integer_dtype(column):
            group.create_dataset(name, data=column.to_numpy(np.int64))
        else:
            write_strings(group, name, column)


def _load_one(model, dataset: Dataset, sample_id: str):
    try:
        return model.preprocess([dataset.load_image(sample_id)])[0], ""
    except DatasetError as exc:
        return None, str(exc)


def _latent_shape(model) -> tuple[int, ...]:
    """Shape of one image's latents, from encoding a blank image (only needed when no image of a shard is readable)."""
    r = model.resolution
    with torch.inference_mode():
        return tuple(model.encode_images(torch.zeros(1, 3, r, r)).shape[1:])


def encode_latents(model, dataset: Dataset, out: str | Path, *, shard: int = 0, shard_size: int | None = None,
                   batch_size: int = 64, workers: int = 4, meta: dict | None = None, progress: bool = True) -> dict:
    """Encode one shard of ``dataset`` with ``model`` into the latents file ``out``; returns a summary.

    ``shard_size`` None means one shard holding every sample. Images are read by ``workers`` threads, one batch
    ahead of the encoder.
    """
    n_all = len(dataset.samples)
    plan = ShardPlan(n_all, shard_size or max(1, n_all))
    rows = dataset.samples.iloc[plan.rows(shard)].reset_index(drop=True)
    ids = list(rows["sample_id"])
    n = len(ids)
    valid = np.zeros(n, bool)
    reasons = [""] * n
    batcher = HalvingBatcher(batch_size, "images (encoder)", "extraction.batch_size")
    attrs = {**(meta or {}), **model_attrs(model), "shard": shard, "row_offset": plan.rows(shard).start,
             "n_rows": n, **provenance()}
    with atomic_h5(out) as f, ThreadPoolExecutor(max(1, workers)) as pool:
        _row_columns(f, rows, dataset.attributes)

        def latents_dataset(shape):  # created once the first batch shows the latent shape
            return f.create_dataset("latents", (n, *shape), np.float32, chunks=(1, *shape), fillvalue=np.nan)

        lat = None
        starts = list(range(0, n, batch_size))

        def submit(a):
            return [pool.submit(_load_one, model, dataset, sid) for sid in ids[a:a + batch_size]]

        pending = submit(0) if starts else []
        bar = tqdm(total=n, desc=f"latents shard {shard}", unit="img", disable=not progress, mininterval=5)
        for i, a in enumerate(starts):
            loaded = [fut.result() for fut in pending]
            pending = submit(starts[i + 1]) if i + 1 < len(starts) else []
            ok = [j for j, (px, _) in enumerate(loaded) if px is not None]
            for j, (_, why) in enumerate(loaded):
                if why:
                    reasons[a + j] = why
                    log.warning("skipping %s: %s", ids[a + j], why)
            if ok:
                pixels = torch.stack([loaded[j][0] for j in ok])
                with torch.inference_mode():
                    parts = batcher.run(len(ok), lambda s, e: model.encode_images(pixels[s:e]).float().cpu())
                enc = torch.cat(parts).numpy()
                if lat is None:
                    lat = latents_dataset(enc.shape[1:])
                block = np.full((len(loaded), *enc.shape[1:]), np.nan, np.float32)
                block[ok] = enc
                lat[a:a + len(loaded)] = block
                valid[[a + j for j in ok]] = True
            bar.update(len(loaded))
        bar.close()
        if lat is None:  # no readable image in this shard
            lat = latents_dataset(_latent_shape(model))
        f.create_dataset("valid", data=valid)
        write_strings(f, "skip_reason", reasons)
        attrs.update(n_valid=int(valid.sum()), latent_shape=list(lat.shape[1:]))
        set_attrs(f, attrs)
    skipped = [(ids[j], reasons[j]) for j in range(n) if not valid[j]]
    return {"shard": shard, "n_rows": n, "n_valid": int(valid.sum()), "skipped": skipped}


def model_attrs(model) -> dict:
    return {"kind": model.kind, "source": str(model.source), "dtype": str(model.dtype).replace("torch.", ""),
            "resolution": int(model.resolution), "geometry": model.geometry}
