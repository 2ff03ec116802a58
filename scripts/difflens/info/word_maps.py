"""The maps task (``infodecomp.maps``): pixel-wise MI, CMI and attention maps of every (image, word) row of a data
set's words.csv, with no masks needed (an image folder's captions, COCO-WL).

It is the localization's per-image computation (``localize_shards.localize_shard`` with the IoU step left out,
resumable through its partial file), written as the localization's maps file (``localize_shards.write_maps``:
``sample_id``, ``word``, ``word_type`` and the latent-grid maps and totals ``MAP_KEYS`` per row) beside a table of
the words' totals in nats (``TOTAL_COLUMNS``):

* ``mi_nats``: i^o of the word alone against the empty prompt;
* ``cmi_nats``: i^o of the caption against the caption without the word (the paper's CMI; the ``cmi`` map sums to
  it). Never negative: it grows with how much the word changes the model's prediction, whether the image agrees
  with the word or not;
* ``cmi_s_nats``: i^s of the same pair (the ``cmi_s`` map's sum): positive where the word helps the model denoise
  the image, negative where it hurts, as a colour the image does not show does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .estimators import LogSNRSampler
from .inputs import split_names, word_rows
from .localize_shards import localize_shard, write_maps

#: the columns of the per-word table (word_maps.csv)
TOTAL_COLUMNS = ["sample_id", "split", "word", "word_type", "caption", "context", "mi_nats", "cmi_nats",
                 "cmi_s_nats"]


def maps_rows(ds, maps: dict) -> pd.DataFrame:
    """The words.csv rows of the ``infodecomp.maps`` section's split (``all``: every image), of its first
    ``max_images`` images (0 = all) in words.csv order; index: the row's position."""
    images = {sid: k for k, sid in enumerate(dict.fromkeys(ds.words["sample_id"]))}  # words.csv order
    rows = word_rows(ds, split_names(maps["split"]), 0, need_masks=False)
    rows = rows.sort_values("sample_id", key=lambda ids: ids.map(images), kind="stable")
    if maps["max_images"]:
        rows = rows[rows["sample_id"].isin(list(dict.fromkeys(rows["sample_id"]))[:maps["max_images"]])]
    return rows.reset_index(drop=True)


def word_maps(model, ds, rows: pd.DataFrame, npz_path: str | Path, *, n_draws: int, sampler: LogSNRSampler,
              seed: int, batch_size: int = 256, progress: bool = True,
              identity: dict | None = None) -> pd.DataFrame:
    """Every row's maps into ``npz_path`` (through ``<npz_path>.partial``, which a restarted job resumes from);
    returns the per-word table (``TOTAL_COLUMNS``)."""
    joined = localize_shard(model, ds, rows, npz_path, n_draws=n_draws, sampler=sampler, seed=seed, n_thresholds=0,
                            batch_size=batch_size, progress=progress, identity=identity, score_masks=False)
    write_maps(npz_path, rows, joined)
    totals = rows.assign(mi_nats=joined["mi_nats"], cmi_nats=joined["cmi_nats"],
                         cmi_s_nats=joined["cmi_s"].sum((1, 2), dtype=np.float64).astype(np.float32))
    return totals[TOTAL_COLUMNS]
