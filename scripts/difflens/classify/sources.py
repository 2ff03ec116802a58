"""Where a classifier's spatial maps come from: one interface (``FeatureSource`` in ``diffc``), two implementations.

``CachedMaps``
    the maps extraction saved (``extraction.save_maps``), read through the feature store: right for small data sets
    such as the shapes world.
``OnTheFlyMaps``
    the denoiser runs inside training on the cached latents, its forward pass stopped after the layer, with the noise
    of (seed, sample id, timestep, draw) exactly as extraction draws it, so no map is ever stored (at 512 px one SD
    up_ft1 map is 2.6 MB in float16: Oxford Pets alone would need ~19 GB per layer and timestep). Maps are rounded
    to float16 as extraction stores them, so both sources give the same features for the same sample.

Training batches are augmented by the listed operations (``crop``: random resized crop, scale 0.8-1; ``flip``:
horizontal flip), seeded by (seed, epoch): on the latents before noising for ``OnTheFlyMaps``, on the maps for
``CachedMaps``. Leave ``flip`` out when the target reads left from right (the shapes world's ``label`` names the
left object of a horizontal pair, so a flipped image carries the other object's label). Targets are integer codes of
one column of the store's row table (``label`` or an attribute column); rows where the column is undefined (-1 or
empty) are left out.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..extract.capture import capture_rows
from ..extract.prompts import format_prompt
from ..extract.store import FeatureStore
from ..models.batching import HalvingBatcher
from .diffc import epoch_generator

SPLITS = ("train", "val", "test")
CROP_SCALE = (0.8, 1.0)
READ_ROWS = 256  # rows per slice when cached maps are read into memory
AUGMENTATIONS = ("crop", "flip")


class TargetError(ValueError):
    """A target column does not exist or cannot be classified (one class, a split without rows)."""


def target_codes(rows, target: str) -> tuple[np.ndarray, list[str]]:
    """(codes, class names) of column ``target`` of a row table: ``label`` keeps its ids (names from label_name);
    another column is coded by its sorted distinct values. Undefined entries (-1, "") get code -1."""
    fixed = ("sample_id", "split", "label_name")
    if target not in rows.columns or target in fixed:
        allowed = ["label"] + [c for c in rows.columns if c not in fixed + ("label",)]
        raise TargetError(f"unknown target column {target!r}; allowed: {allowed}")
    if target == "label":
        codes = rows["label"].to_numpy(np.int64)
        names = {int(c): n for c, n in zip(codes, rows["label_name"]) if c >= 0}
        return codes, [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
    values = rows[target].astype(str).to_numpy()
    names = sorted(set(values) - {""})
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index.get(v, -1) for v in values], np.int64), names


def check_augment(ops) -> tuple[str, ...]:
    """``ops`` as a tuple of known augmentation names; TargetError naming any other."""
    ops = tuple(ops)
    unknown = [op for op in ops if op not in AUGMENTATIONS]
    if unknown:
        raise TargetError(f"unknown augmentation(s) {unknown}; allowed: {list(AUGMENTATIONS)}")
    return ops


def augment(x: torch.Tensor, gen: torch.Generator, ops=AUGMENTATIONS) -> torch.Tensor:
    """Per item, the operations of ``ops`` in order: ``crop`` (random resized crop, scale 0.8-1, aspect 3/4-4/3, back
    to the input size), ``flip`` (horizontal flip with probability 1/2)."""
    ops = check_augment(ops)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(len(x)):
        item = x[i]
        if "crop" in ops:
            scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * float(torch.rand((), generator=gen))
            ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * float(torch.rand((), generator=gen)))
            ch = max(1, min(h, round(math.sqrt(scale * h * w / ratio))))
            cw = max(1, min(w, round(math.sqrt(scale * h * w * ratio))))
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            crop = item[None, ..., top:top + ch, left:left + cw].float()
            item = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].to(x.dtype)
        if "flip" in ops and bool(torch.rand((), generator=gen) < 0.5):
            item = item.flip(-1)
        out[i] = item
    return out


class _SplitSource:
    """Rows by split (target defined), batching order and augmentation; subclasses say how maps are made."""

    def __init__(self, store: FeatureStore, model: str, dataset: str, layer: str, timestep: int, target: str,
                 seed: int, augment):
        self.store, self.model_name, self.dataset, self.layer, self.timestep = store, model, dataset, layer, timestep
        self.target, self.seed, self.augment = target, int(seed), check_augment(augment)
        self.rows, self.codes = {}, {}
        table = store.rows(model, dataset, layer, timestep)
        codes, self.class_names = target_codes(table, target)  # one coding for every split
        for split in SPLITS:
            keep = (table["split"] == split).to_numpy() & (codes >= 0)
            if not keep.any():
                raise TargetError(f"{model}/{dataset} {layer} t{timestep}: split {split!r} has no rows with a "
                                  f"{target!r} value")
            self.rows[split], self.codes[split] = table[keep].reset_index(drop=True), codes[keep]
        present = np.unique(self.codes["train"])
        if len(present) < 2:
            raise TargetError(f"target {target!r} of {model}/{dataset}: the train split has a single class "
                              f"{[self.class_names[i] for i in present]}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def n(self, split: str) -> int:
        return len(self.codes[split])

    def _order(self, split: str, epoch: int, train: bool) -> np.ndarray:
        if not train:
            return np.arange(self.n(split))
        return torch.randperm(self.n(split), generator=epoch_generator(self.seed, epoch)).numpy()

    def batches(self, split: str, batch_size: int, *, epoch: int, train: bool) -> Iterator[tuple[torch.Tensor,
                                                                                                   torch.Tensor]]:
        order = self._order(split, epoch, train)
        gen = epoch_generator(self.seed, epoch, stream=1)  # augmentation
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            yield self._maps(split, idx, gen if train and self.augment else None), \
                torch.from_numpy(self.codes[split][idx])


class CachedMaps(_SplitSource):
    """Maps saved by extraction, held in memory (float16) when every split together fits in ``max_bytes`` with a
    quarter to spare (``classify.cache_limit_gb``), else read row by row."""

    def __init__(self, store: FeatureStore, model: str, dataset: str, layer: str, timestep: int, *,
                 target: str = "label", seed: int = 0, augment=AUGMENTATIONS, max_bytes: int = 2 ** 31):
        super().__init__(store, model, dataset, layer, timestep, target, seed, augment)
        self._maps_of = {}
        for split in SPLITS:
            data = store.maps_dataset(model, dataset, layer, timestep, split=split)
            wanted = set(self.rows[split]["sample_id"])  # (np.isin on string ids took seconds)
            keep = np.flatnonzero([sid in wanted for sid in data.sample_ids])
            self._maps_of[split] = (data, keep)
        first = self._maps_of["train"][0][0][0]
        self.channels, self.map_size = int(first.shape[0]), tuple(first.shape[-2:])
        per_row = 2 * int(np.prod(first.shape))
        fits = per_row * sum(len(self.codes[s]) for s in SPLITS) * 1.25 <= max_bytes
        self._memory = {split: self._read_split(split) for split in SPLITS} if fits else None

    def _read_split(self, split: str) -> torch.Tensor:
        """The split's maps (float16) in the order of its rows, read in slices of ``READ_ROWS`` straight into their
        places: the peak is the split plus one slice."""
        where = {sid: i for i, sid in enumerate(self.rows[split]["sample_id"])}
        out = np.empty((len(where), self.channels, *self.map_size), np.float16)
        filled = 0
        for part in self.store.iter_maps(self.model_name, self.dataset, self.layer, self.timestep, split=split,
                                         batch_size=READ_ROWS, dtype=np.float16):
            keep = [(i, where[sid]) for i, sid in enumerate(part.sample_id) if sid in where]
            if keep:
                src, dst = map(np.asarray, zip(*keep))
                out[dst] = part.x[src]
                filled += len(dst)
        if filled != len(where):
            raise TargetError(f"{self.model_name}/{self.dataset} {self.layer} t{self.timestep}: {len(where) - filled} "
                              f"{split} rows have no saved map")
        return torch.from_numpy(out)

    def _maps(self, split: str, idx: np.ndarray, gen: torch.Generator | None) -> torch.Tensor:
        if self._memory is not None:
            x = self._memory[split][torch.from_numpy(idx)].float()
        else:
            data, keep = self._maps_of[split]
            x = torch.stack([data[int(keep[i])][0] for i in idx])
        return augment(x, gen, self.augment) if gen is not None else x


def head_name(timestep: int, layer: str) -> str:
    """The name of the classifier head of one (timestep, layer)."""
    return f"t{int(timestep)}/{layer}"


class OnTheFlyMaps(_SplitSource):
    """Maps computed by ``denoiser`` (a loaded ``DiffusionModel``) from the cached latents, as extraction would with
    (``seed``, ``noise_draws``, ``prompt``); ``batch_size`` of the denoiser is the classifier's.

    With ``keys`` ((timestep, layer) pairs; the rows are those of ``layer`` at ``timestep``) it is a multi-head
    source (``classify.diffc.train_diffc_heads``): one denoiser batch, stopped after the deepest layer, gives every
    key's maps of a batch (``heads``: ``head_name`` of each key; ``shapes``: head -> (C, H, W))."""

    def __init__(self, store: FeatureStore, denoiser, model: str, dataset: str, layer: str, timestep: int, *,
                 target: str = "label", seed: int = 0, noise_draws: int = 1, prompt: str = "",
                 augment=AUGMENTATIONS, keys=None):
        super().__init__(store, model, dataset, layer, timestep, target, seed, augment)
        self.denoiser, self.noise_draws, self.prompt = denoiser, int(noise_draws), prompt
        self.keys = [(int(t), str(name)) for t, name in keys] if keys else None
        # a classifier batch's denoiser pass, split in halves on out of memory (the maps stay the same)
        self._batcher = HalvingBatcher(1 << 30, "images (Diff-C's denoiser pass)", "classify.batch_size")
        self._latents = {}
        for split in SPLITS:
            data = store.latents_dataset(model, dataset, split=split)
            position = {sid: i for i, sid in enumerate(data.sample_ids)}
            self._latents[split] = (data, np.asarray([position[s] for s in self.rows[split]["sample_id"]]))
        probe = self._maps("train", np.arange(1), None)
        if self.keys:
            self.heads = tuple(probe)
            self.shapes = {h: tuple(int(v) for v in m.shape[1:]) for h, m in probe.items()}
            probe = probe[head_name(timestep, layer)] if head_name(timestep, layer) in probe else \
                next(iter(probe.values()))
        self.channels, self.map_size = int(probe.shape[1]), tuple(probe.shape[-2:])

    def _maps(self, split: str, idx: np.ndarray, gen: torch.Generator | None):
        """The maps (b, C, H, W) of rows ``idx`` of a split, or with ``keys`` every key's, by head name."""
        data, where = self._latents[split]
        x0 = torch.stack([data[int(where[i])][0] for i in idx])
        if gen is not None:
            x0 = augment(x0, gen, self.augment)
        rows = self.rows[split].iloc[idx]
        cond = self.denoiser.encode_text([format_prompt(self.prompt, n) for n in rows["label_name"]])
        keys = self.keys or [(self.timestep, self.layer)]
        timesteps = list(dict.fromkeys(t for t, _ in keys))
        layers = list(dict.fromkeys(name for _, name in keys))
        ids = list(rows["sample_id"])

        def capture(a: int, b: int) -> dict:  # rows a..b: their noise is seeded by their ids, so slices agree
            return capture_rows(self.denoiser, x0[a:b].to(self.denoiser.device), ids[a:b], cond[a:b], timesteps,
                                self.noise_draws, layers, self.seed, True)

        parts = self._batcher.run(len(ids), capture)
        maps = {head_name(t, name): torch.cat([p[name].maps[timesteps.index(t)] for p in parts]).float()
                for t, name in keys}
        return maps if self.keys else maps[head_name(self.timestep, self.layer)]


def choose_mode(mode: str, entry: dict, limit_gb: float) -> str:
    """``cached`` or ``on_the_fly`` for one (timestep, layer) entry of an extraction index (``maps``, ``map_shape``,
    ``n_valid``): ``auto`` takes the saved maps when a copy of them (float16) fits in ``limit_gb`` with a quarter to
    spare, the rule by which ``CachedMaps`` holds them in memory and ``resources.cached_maps_mb`` sizes the job (so a
    cached job never reads its maps row by row)."""
    size_gb = entry["n_valid"] * int(np.prod(entry["map_shape"])) * 2 * 1.25 / 2 ** 30
    if mode == "cached" and not entry["maps"]:
        raise TargetError(f"classify.mode is cached but the maps of {entry['layer']} at t{entry['timestep']} were not "
                          f"saved: set extraction.save_maps: true (or classify.mode: on_the_fly / auto)")
    if mode == "auto":
        return "cached" if entry["maps"] and size_gb <= limit_gb else "on_the_fly"
    if mode not in ("cached", "on_the_fly"):
        raise TargetError(f"classify.mode {mode!r} is not one of ['auto', 'cached', 'on_the_fly']")
    return mode
