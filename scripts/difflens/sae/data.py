"""The vectors a k-SAE reads, from the feature store: ``pooled`` (one spatially averaged vector per image, as in
Revelio) or ``spatial`` (one vector per map position, as the SAE work on SD and SDXL trains; needs the maps saved).

For training, ``spatial`` takes ``positions`` map positions per image, drawn without replacement by a generator
seeded with (seed, the image's sample id), so the draw does not depend on shards or order; for analysis, every
position, in row-major order, so that an image's score for a latent is the maximum over its map.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from ..extract.store import FeatureStore
from .model import SAEError

INPUTS = ("pooled", "spatial")


def _position_draw(seed: int, sample_id: str, n_positions: int, take: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), zlib.crc32(str(sample_id).encode())])
    return np.sort(rng.choice(n_positions, size=min(take, n_positions), replace=False))


def load_vectors(store: FeatureStore, model: str, dataset: str, layer: str, timestep: int, *, input: str,
                 split: str, positions: int | None = None, seed: int = 0):
    """(vectors (m, C) float32 tensor, rows (the store's row table of the images, in order), positions per image).

    ``positions`` None = every map position (analysis); an int = that many seeded positions per image (training,
    spatial input only)."""
    if input not in INPUTS:
        raise SAEError(f"SAE input {input!r} is not one of {list(INPUTS)}")
    rows = store.rows(model, dataset, layer, timestep, split=split)
    if len(rows) == 0:
        raise SAEError(f"SAE: {model}/{dataset} {layer} t{timestep} has no {split!r} rows")
    if input == "pooled":
        feats = store.pooled(model, dataset, layer, timestep, split=split)
        _check_ids(feats.sample_id, rows, f"{layer} t{timestep} pooled")
        return torch.from_numpy(np.ascontiguousarray(feats.x, np.float32)), rows, 1
    out, ids, at, what = None, [], 0, f"{layer} t{timestep} maps"
    for batch in store.iter_maps(model, dataset, layer, timestep, split=split, batch_size=256, dtype=np.float16):
        c, h, w = batch.x.shape[1:]
        flat = batch.x.reshape(len(batch.x), c, h * w).transpose(0, 2, 1)  # (b, positions, C), a view
        if positions is not None:
            flat = np.stack([flat[i, _position_draw(seed, sid, h * w, positions)]
                             for i, sid in enumerate(batch.sample_id)])
        if out is None:  # the float32 vectors of every image, filled batch by batch (no float16 copy of them all)
            out = np.empty((len(rows) * flat.shape[1], c), np.float32)
        ids.extend(batch.sample_id)
        n = flat.shape[0] * flat.shape[1]
        if at + n > len(out):  # more rows than the row table: the check below names them
            _check_ids(np.asarray(ids), rows, what)
        out[at:at + n].reshape(flat.shape)[...] = flat  # cast to float32 in place
        at += n
    _check_ids(np.asarray(ids), rows, what)
    return torch.from_numpy(out), rows, len(out) // len(rows)


def _check_ids(ids: np.ndarray, rows, what: str) -> None:
    if list(ids) != list(rows["sample_id"]):
        raise SAEError(f"SAE: the {what} rows ({len(ids)}) do not match the row table ({len(rows)}) sample for "
                       f"sample; re-extract")
