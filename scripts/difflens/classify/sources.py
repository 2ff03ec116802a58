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
horizontal flip): on the maps for ``CachedMaps`` and, for ``OnTheFlyMaps``, on the latents before noising
(``augment_on: latents``, seeded by (seed, epoch)) or on the image before the VAE (``augment_on: pixels``, the public
code's transform: torchvision's ``RandomResizedCrop(R, scale=(0.8, 1))`` of the whole image and
``RandomHorizontalFlip(0.5)``, seeded by (seed, epoch, sample id)). Leave ``flip`` out when the target reads left
from right (the shapes world's ``label`` names the left object of a horizontal pair, so a flipped image carries the
other object's label). Val and test are never augmented.

Noise: the cached maps carry extraction's draw, (seed, sample id, timestep, draw), in every epoch. On the fly,
``noise: extraction`` draws the same; ``noise: per_epoch`` draws new noise for each train epoch (as the public code,
which calls ``randn_like`` at every pass), seeded by (seed, epoch, sample id, timestep, draw), so it does not depend
on batch size or order; val and test keep extraction's noise. Targets are integer codes of one column of the store's
row table (``label`` or an attribute column); rows where the column is undefined (-1 or empty) are left out.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..extract.capture import capture_rows
from ..extract.prompts import CLIP_PROMPT, row_prompts
from ..extract.store import FeatureStore
from ..models.base import fit_square
from ..models.batching import HalvingBatcher
from ..seeding import derive_seed
from .diffc import TRAINVAL, epoch_generator

SPLITS = ("train", "val", "test")
CROP_SCALE = (0.8, 1.0)  # the public code's RandomResizedCrop scale (its ratio is torchvision's 3/4-4/3)
CROP_RATIO = (3 / 4, 4 / 3)
READ_ROWS = 256  # rows per slice when cached maps are read into memory
AUGMENTATIONS = ("crop", "flip")
AUGMENT_ON = ("latents", "pixels")  # classify.augment_on
NOISE = ("extraction", "per_epoch")  # classify.noise
_GLOBAL_RNG = threading.Lock()  # torchvision's crop parameters come from torch's global generator

log = logging.getLogger(__name__)


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


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log a warning once per process (every head of a job builds its own source)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def check_recipe(augment_on: str, noise: str) -> None:
    """ValueError naming classify.augment_on / classify.noise for a value they do not take."""
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"config key classify.augment_on: {augment_on!r} is not one of {list(AUGMENT_ON)}")
    if noise not in NOISE:
        raise ValueError(f"config key classify.noise: {noise!r} is not one of {list(NOISE)}")


def pixel_augment(image, size: int, ops, seed: int):
    """A PIL image as the public code augments a training image, at ``size`` x ``size``: ``crop`` is torchvision's
    ``RandomResizedCrop(size, scale=(0.8, 1))`` of the whole image (ratio 3/4-4/3, bilinear, antialiased; without
    ``crop`` the image is resized and centre-cropped as extraction does), ``flip`` is ``RandomHorizontalFlip(0.5)``,
    both drawn, in that order, from torch's generator seeded with ``seed`` (the global one, forked under a lock)."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    ops = check_augment(ops)
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        box = T.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO)) if "crop" in ops else None
        flip = "flip" in ops and bool(torch.rand(1) < 0.5)
    if box is not None:
        image = TF.resized_crop(image, *box, [size, size], interpolation=T.InterpolationMode.BILINEAR, antialias=True)
    else:
        image = fit_square(image, size)
    return TF.hflip(image) if flip else image


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
        self.rows[TRAINVAL] = pd.concat([self.rows["train"], self.rows["val"]], ignore_index=True)
        self.codes[TRAINVAL] = np.concatenate([self.codes["train"], self.codes["val"]])
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

    def _parts(self, split: str, idx: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Where rows ``idx`` of ``split`` live: (split held, positions in ``idx``, rows of that split); the rows of
        ``TRAINVAL`` are train's, then val's."""
        if split != TRAINVAL:
            return [(split, np.arange(len(idx)), idx)]
        n_train, idx = self.n("train"), np.asarray(idx)
        return [(part, np.flatnonzero(mask), idx[mask] - offset)
                for part, mask, offset in (("train", idx < n_train, 0), ("val", idx >= n_train, n_train))
                if mask.any()]

    def batches(self, split: str, batch_size: int, *, epoch: int, train: bool) -> Iterator[tuple[torch.Tensor,
                                                                                                   torch.Tensor]]:
        order = self._order(split, epoch, train)
        gen = epoch_generator(self.seed, epoch, stream=1)  # augmentation
        for a in range(0, len(order), batch_size):
            idx = order[a:a + batch_size]
            yield self._maps(split, idx, gen if train and self.augment else None, epoch if train else None), \
                torch.from_numpy(self.codes[split][idx])


class CachedMaps(_SplitSource):
    """Maps saved by extraction, held in memory (float16) when every split together fits in ``max_bytes`` with a
    quarter to spare (``classify.cache_limit_gb``), else read row by row."""

    def __init__(self, store: FeatureStore, model: str, dataset: str, layer: str, timestep: int, *,
                 target: str = "label", seed: int = 0, augment=AUGMENTATIONS, max_bytes: int = 2 ** 31,
                 augment_on: str = "latents", noise: str = "extraction"):
        super().__init__(store, model, dataset, layer, timestep, target, seed, augment)
        check_recipe(augment_on, noise)
        if noise != "extraction":
            _warn_once(f"classify.noise is {noise}, but cached maps carry extraction's noise: one fixed draw per "
                       f"image (seed, sample id, timestep) in every epoch (classify.mode: on_the_fly draws new noise)")
        if augment_on != "latents" and self.augment:
            _warn_once(f"classify.augment_on is {augment_on}, but cached maps are augmented as maps "
                       f"({list(self.augment)}), not as images (classify.mode: on_the_fly augments the images)")
        self.recipe = {"augment": list(self.augment), "augment_on": "maps", "noise": "extraction"}
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

    def _maps(self, split: str, idx: np.ndarray, gen: torch.Generator | None, epoch: int | None = None):
        x = torch.empty((len(idx), self.channels, *self.map_size))
        for part, where, rows in self._parts(split, idx):
            if self._memory is not None:
                x[where] = self._memory[part][torch.from_numpy(rows)].float()
            else:
                data, keep = self._maps_of[part]
                x[where] = torch.stack([data[int(keep[i])][0] for i in rows]).float()
        return augment(x, gen, self.augment) if gen is not None else x


def head_name(timestep: int, layer: str) -> str:
    """The name of the classifier head of one (timestep, layer)."""
    return f"t{int(timestep)}/{layer}"


class OnTheFlyMaps(_SplitSource):
    """Maps computed by ``denoiser`` (a loaded ``DiffusionModel``) from the cached latents, as extraction would with
    (``seed``, ``noise_draws``, ``prompt``); ``batch_size`` of the denoiser is the classifier's.

    Training batches: ``augment_on`` ``latents`` augments the cached latents; ``pixels`` reads each image of
    ``images`` (the data set, a ``difflens.data.common.Dataset``), augments it (``pixel_augment``, ``workers``
    threads) and encodes it with the denoiser's VAE. ``noise`` ``per_epoch`` draws new noise for every epoch. Val,
    test and any batch with ``train=False`` are made as extraction made them.

    With ``keys`` ((timestep, layer) pairs; the rows are those of ``layer`` at ``timestep``) it is a multi-head
    source (``classify.diffc.train_diffc_heads``): one denoiser batch, stopped after the deepest layer, gives every
    key's maps of a batch (``heads``: ``head_name`` of each key; ``shapes``: head -> (C, H, W))."""

    def __init__(self, store: FeatureStore, denoiser, model: str, dataset: str, layer: str, timestep: int, *,
                 target: str = "label", seed: int = 0, noise_draws: int = 1, prompt: str = "",
                 augment=AUGMENTATIONS, keys=None, augment_on: str = "latents", noise: str = "extraction",
                 images=None, workers: int = 4):
        super().__init__(store, model, dataset, layer, timestep, target, seed, augment)
        check_recipe(augment_on, noise)
        self.denoiser, self.noise_draws, self.prompt = denoiser, int(noise_draws), prompt
        # each image's prompt as extraction gave it (prompt clip: CLIP's choice, stored in the files' rows)
        self._chosen = store.prompts(model, dataset, layer, timestep) if prompt == CLIP_PROMPT else None
        self.augment_on, self.noise, self.images = augment_on, noise, images
        self.recipe = {"augment": list(self.augment), "augment_on": augment_on, "noise": noise}
        self._pixels = augment_on == "pixels" and bool(self.augment)
        if self._pixels and images is None:
            raise ValueError("classify.augment_on: pixels needs the data set's images (OnTheFlyMaps images=...)")
        self._pool = ThreadPoolExecutor(max(1, int(workers))) if self._pixels else None
        self.keys = [(int(t), str(name)) for t, name in keys] if keys else None
        # a classifier batch's denoiser pass, split in halves on out of memory (the maps stay the same)
        self._batcher = HalvingBatcher(1 << 30, "images (Diff-C's denoiser pass)", "classify.batch_size")
        self._latents = {}
        for split in SPLITS:
            data = store.latents_dataset(model, dataset, split=split)
            position = {sid: i for i, sid in enumerate(data.sample_ids)}
            self._latents[split] = (data, np.asarray([position[s] for s in self.rows[split]["sample_id"]]))
        self._latent_shape = tuple(self._latents["train"][0][0][0].shape)
        probe = self._maps("train", np.arange(1), None)
        if self.keys:
            self.heads = tuple(probe)
            self.shapes = {h: tuple(int(v) for v in m.shape[1:]) for h, m in probe.items()}
            probe = probe[head_name(timestep, layer)] if head_name(timestep, layer) in probe else \
                next(iter(probe.values()))
        self.channels, self.map_size = int(probe.shape[1]), tuple(probe.shape[-2:])

    def _pixel_latents(self, ids: list[str], epoch: int) -> torch.Tensor:
        """The latents of the training images ``ids``, each read, augmented (``pixel_augment``, seeded by (seed,
        epoch, sample id)) and encoded by the denoiser's VAE."""
        r = int(self.denoiser.resolution)

        def one(sid: str):
            return pixel_augment(self.images.load_image(sid), r, self.augment,
                                 derive_seed(self.seed, "diffc_augment", int(epoch), sid))

        pixels = self.denoiser.preprocess(list(self._pool.map(one, ids)))
        with torch.no_grad():
            return self.denoiser.encode_images(pixels).float()

    def _maps(self, split: str, idx: np.ndarray, gen: torch.Generator | None, epoch: int | None = None):
        """The maps (b, C, H, W) of rows ``idx`` of a split, or with ``keys`` every key's, by head name; ``epoch``
        (None: not a training batch) seeds the pixel augmentation and the per-epoch noise."""
        rows = self.rows[split].iloc[idx]
        if self._pixels and epoch is not None:
            x0 = self._pixel_latents(list(rows["sample_id"]), epoch)
        else:
            x0 = torch.empty((len(idx), *self._latent_shape))
            for part, at, sub in self._parts(split, idx):
                data, where = self._latents[part]
                x0[at] = torch.stack([data[int(where[i])][0] for i in sub]).float()
            if gen is not None:
                x0 = augment(x0, gen, self.augment)
        noise_seed = derive_seed(self.seed, "diffc_noise", int(epoch)) \
            if self.noise == "per_epoch" and epoch is not None else self.seed
        cond = self.denoiser.encode_text(row_prompts(self.prompt, rows["sample_id"], rows["label_name"], self._chosen))
        keys = self.keys or [(self.timestep, self.layer)]
        timesteps = list(dict.fromkeys(t for t, _ in keys))
        layers = list(dict.fromkeys(name for _, name in keys))
        ids = list(rows["sample_id"])

        def capture(a: int, b: int) -> dict:  # rows a..b: their noise is seeded by their ids, so slices agree
            return capture_rows(self.denoiser, x0[a:b].to(self.denoiser.device), ids[a:b], cond[a:b], timesteps,
                                self.noise_draws, layers, noise_seed, True)

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
