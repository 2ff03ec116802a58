"""Diff-C (Revelio, section 1.5 of docs/reference.md): a small convolutional classifier on the spatial map of one
block at one timestep, trained with the epoch picked on the validation split and the test split read once.

The training loop reads its data through a **feature source**, any object with this shape (``FeatureSource``):

* ``channels: int`` -- C of one map; ``map_size: tuple[int, int]`` -- its (H, W);
* ``n(split) -> int`` -- the rows of a split ("train", "val", "test", and ``TRAINVAL``: train then val, which
  ``DiffCSettings.refit`` trains on);
* ``batches(split, batch_size, *, epoch, train)`` -- an iterator of ``(maps, targets)``: maps (b, C, H, W)
  float32, integer class targets (b,). With ``train=True`` the rows come shuffled by (the source's seed,
  ``epoch``) and augmented as the source sees fit; with ``train=False`` in row order and not augmented. The same
  (seed, epoch) must give the same batches, so that a resumed training repeats an uninterrupted one.

``TensorSource`` is the in-memory source (tests, notebooks); the pipeline's sources (cached maps read through
``difflens.extract.store``, denoiser features computed on the fly) implement the same protocol. A source may say
how it makes its training inputs in ``recipe`` (a dict: augmentation, noise); a resumed run must have the same.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models.batching import is_oom

SPLITS = ("train", "val", "test")
TRAINVAL = "train+val"  # the train rows, then the val rows: what a refit trains on
CHECKPOINT = "diffc_state.pt"
LR_SCHEDULES = ("constant", "cosine")

logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What ``train_diffc`` reads: maps and class targets of the splits, in seeded batches (module docstring)."""

    channels: int
    map_size: tuple[int, int]
    codes: dict  # split -> the class codes of its rows (for the majority-class rate)

    def n(self, split: str) -> int:
        ...

    def batches(self, split: str, batch_size: int, *, epoch: int,
                train: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


# ---- model --------------------------------------------------------------------------------------------------------
def _conv_bn_relu(c_in: int, c_out: int, stride: int, drop: float = 0.0) -> nn.Sequential:
    """3x3 convolution (padding 1; no bias, BatchNorm follows) -> BatchNorm -> ReLU, then channel dropout
    (``Dropout2d``) when ``drop`` > 0 (none at 0: the parameter names are the same either way)."""
    layers = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
              nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([nn.Dropout2d(drop)] if drop > 0 else []))


class DiffC(nn.Module):
    """Input BatchNorm (no affine) -> conv C->width -> three stride-2 convs width->width -> global mean -> dropout ->
    linear to the classes; every conv with BatchNorm and ReLU, and ``Dropout2d(conv_dropout)`` after it when
    ``conv_dropout`` > 0. Any (C, H, W) map works, 4x4 included."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 1024, dropout: float = 0.5,
                 conv_dropout: float = 0.0):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("n_classes", n_classes, 2), ("width", width, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"DiffC: {name} must be an integer >= {low}, got {value!r}")
        for name, value in (("dropout", dropout), ("conv_dropout", conv_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"DiffC: {name} must be in [0, 1), got {value!r}")
        self.norm = nn.BatchNorm2d(in_channels, affine=False)
        self.features = nn.Sequential(_conv_bn_relu(in_channels, width, 1, conv_dropout),
                                      *[_conv_bn_relu(width, width, 2, conv_dropout) for _ in range(3)])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Class logits (b, n_classes) of maps (b, C, H, W)."""
        pooled = self.features(self.norm(maps)).mean(dim=(2, 3))
        return self.head(self.dropout(pooled))


# ---- in-memory source ---------------------------------------------------------------------------------------------
def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The generator of one epoch's shuffle (``stream`` 0; other streams, e.g. augmentation, get their own): seeded
    by (seed, epoch, stream) alone, so any epoch can be replayed."""
    key = [int(seed), int(epoch)] + ([int(stream)] if stream else [])
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class TensorSource:
    """A feature source held in memory: ``maps[split]`` (n, C, H, W) and ``targets[split]`` (n,) integers.

    No augmentation; training batches are shuffled by ``epoch_generator(seed, epoch)``. ``TRAINVAL`` is the train
    maps, then the val maps.
    """

    def __init__(self, maps: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], seed: int = 0):
        if set(maps) != set(targets):
            raise ValueError(f"TensorSource: maps have splits {sorted(maps)} but targets {sorted(targets)}")
        shapes = {split: tuple(m.shape) for split, m in maps.items()}
        if any(len(s) != 4 for s in shapes.values()) or len({s[1:] for s in shapes.values()}) > 1:
            raise ValueError(f"TensorSource: maps must be (n, C, H, W) with the same (C, H, W) in every split, "
                             f"got {shapes}")
        for split, y in targets.items():
            if y.dim() != 1 or len(y) != len(maps[split]) or y.is_floating_point():
                raise ValueError(f"TensorSource: targets[{split!r}] must be {len(maps[split])} integers, got "
                                 f"{y.dtype} of shape {tuple(y.shape)}")
        self.maps, self.targets, self.seed = maps, targets, seed
        _, self.channels, h, w = next(iter(shapes.values()), (0, 0, 0, 0))
        self.map_size = (h, w)

    def _parts(self, split: str) -> list[str]:
        """The held splits that make up ``split``."""
        parts = ["train", "val"] if split == TRAINVAL else [split]
        missing = [s for s in parts if s not in self.maps]
        if missing:
            raise ValueError(f"TensorSource: no split {missing[0]!r}; it holds {sorted(self.maps)}")
        return parts

    def n(self, split: str) -> int:
        return sum(len(self.maps[s]) for s in self._parts(split))

    @property
    def codes(self) -> dict:
        return {split: y.numpy() for split, y in self.targets.items()}

    def batches(self, split: str, batch_size: int, *, epoch: int,
                train: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        parts = self._parts(split)
        maps, targets = (torch.cat([held[s] for s in parts]) if len(parts) > 1 else held[split]
                         for held in (self.maps, self.targets))
        n = len(maps)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if train else torch.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            yield maps[rows].float(), targets[rows].long()


class HeadSources:
    """Several single-map sources over the same rows (one per head, e.g. the cached maps of each layer) as one
    multi-head source: their batches are drawn side by side, each source shuffling and augmenting as it would alone,
    and must hold the same targets. A source that makes every head's maps at once (``OnTheFlyMaps`` with ``keys``)
    saves the repeated work; this one only saves the separate jobs."""

    def __init__(self, sources: dict):
        if not sources:
            raise ValueError("HeadSources: no sources")
        self.sources = dict(sources)
        self.heads = tuple(self.sources)
        self.shapes = {h: (int(s.channels), *(int(v) for v in s.map_size)) for h, s in self.sources.items()}
        first = next(iter(self.sources.values()))
        for h, s in self.sources.items():
            sizes = {split: s.n(split) for split in SPLITS}
            if sizes != {split: first.n(split) for split in SPLITS}:
                raise ValueError(f"HeadSources: head {h!r} has rows {sizes}, the first head "
                                 f"{ {split: first.n(split) for split in SPLITS} }")

    def n(self, split: str) -> int:
        return next(iter(self.sources.values())).n(split)

    @property
    def codes(self) -> dict:
        """The class codes by split (every head holds the same)."""
        return next(iter(self.sources.values())).codes

    @property
    def recipe(self) -> dict:
        """How the training inputs are made (every head's source is built alike: the first one's)."""
        return dict(getattr(next(iter(self.sources.values())), "recipe", {}))

    def batches(self, split: str, batch_size: int, *, epoch: int, train: bool):
        streams = {h: s.batches(split, batch_size, epoch=epoch, train=train) for h, s in self.sources.items()}
        for parts in zip(*streams.values()):
            targets = parts[0][1]
            for h, (_, y) in zip(self.heads, parts):
                if not torch.equal(y, targets):
                    raise ValueError(f"HeadSources: head {h!r} gives other targets than head {self.heads[0]!r} "
                                     f"in a {split} batch: the sources do not hold the same rows")
            yield {h: maps for h, (maps, _) in zip(self.heads, parts)}, targets


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class DiffCSettings:
    """Optimisation settings of Diff-C; the defaults are difflens' behaviour before these options existed.

    Public code (revelio-diffusion/revelio, ``diffc_image_classification`` at cd23c87, read here): AdamW (torch's
    default weight decay 0.01), lr 1e-4 (``train.py``), batch 16 and ``--num_epochs 90`` (``run.sh``) with
    ``CosineAnnealingLR(T_max=num_epochs)`` stepped once per epoch and the loop broken after the 30th epoch (so 30
    epochs on the first third of a 90-epoch cosine); its head (``models.py``) has width 1024, ``Dropout2d`` after
    each of the four conv blocks and ``Dropout`` before the linear layer, all at ``--dropout_rate``, whose argparse
    default is 0.5 but which ``run.sh`` sets to 0.0 (``--dropout 0.0``, an argparse prefix of ``--dropout_rate``).
    It trains on the data set's whole train split and logs test accuracy every epoch, with no validation split. Its
    inputs (``constants.py``, ``feature_models/diffusion_features.py``): RandomResizedCrop(512, scale=(0.8, 1.0)) and
    RandomHorizontalFlip(0.5) of the image before the VAE, new ``randn_like`` noise at every pass; in difflens these
    are the feature sources' (``classify.sources``: ``augment_on``, ``noise``).

    Paper text, in the summary this project works from (the paper itself was not reread for this): AdamW 1e-4, 30
    epochs, batch 16, a dropout before the linear layer, RandomResizedCrop 0.8-1.0 and flips; no dropout rate and no
    learning-rate schedule named. docs/reference.md section 1.5 tabulates which config uses which values.

    ``lr_schedule``: ``constant`` or ``cosine`` (``CosineAnnealingLR`` with ``T_max = lr_t_max``, None = ``epochs``,
    stepped after each epoch); ``conv_dropout``: the ``Dropout2d`` rate after each conv block (0 = none);
    ``dropout``: before the linear layer; ``refit``: after the epoch is chosen on val, train a new net (the same
    initial weights) on train + val for that many epochs and score the test split once with it.
    """

    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 16
    width: int = 1024
    dropout: float = 0.5
    seed: int = 0
    lr_schedule: str = "constant"
    lr_t_max: int | None = None
    conv_dropout: float = 0.0
    refit: bool = False

    def __post_init__(self):
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
                  "batch_size": self.batch_size >= 2, "width": self.width >= 1, "dropout": 0 <= self.dropout < 1,
                  "conv_dropout": 0 <= self.conv_dropout < 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("Diff-C settings: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad) +
                             " out of range (classify.epochs >= 1, classify.lr > 0, weight_decay >= 0, "
                             "classify.batch_size >= 2 (BatchNorm), classify.width >= 1, 0 <= classify.dropout < 1, "
                             "0 <= classify.conv_dropout < 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"config key classify.lr_schedule: {self.lr_schedule!r} is not one of "
                             f"{list(LR_SCHEDULES)}")
        if self.lr_t_max is not None:
            if isinstance(self.lr_t_max, bool) or int(self.lr_t_max) != self.lr_t_max or self.lr_t_max < 1:
                raise ValueError(f"config key classify.lr_t_max: {self.lr_t_max!r} must be an integer >= 1 (epochs), "
                                 f"or null for classify.epochs")
            if self.lr_schedule != "cosine":
                raise ValueError(f"config key classify.lr_t_max: {self.lr_t_max!r} is set but classify.lr_schedule "
                                 f"is {self.lr_schedule!r}; it is the period of the cosine schedule only (set it to "
                                 f"null, or lr_schedule: cosine)")
        if not isinstance(self.refit, bool):
            raise ValueError(f"config key classify.refit: {self.refit!r} must be true or false")

    @property
    def t_max(self) -> int | None:
        """The cosine schedule's T_max in epochs (None for the constant schedule)."""
        if self.lr_schedule != "cosine":
            return None
        return int(self.lr_t_max) if self.lr_t_max is not None else int(self.epochs)


def check_targets(targets: torch.Tensor, n_classes: int, split: str) -> None:
    """Raise ValueError unless ``targets`` are integers in [0, n_classes)."""
    if targets.is_floating_point():
        raise ValueError(f"Diff-C: {split} targets must be integers, got {targets.dtype}")
    if len(targets) and int(targets.min()) < 0:
        raise ValueError(f"Diff-C: {split} targets must be >= 0, got {int(targets.min())}")
    if len(targets) and int(targets.max()) >= n_classes:
        raise ValueError(f"Diff-C: a {split} target is {int(targets.max())} but n_classes is {n_classes}; it must be "
                         f"at least the largest target + 1")


def majority_share(codes) -> float:
    """The share of the most common class among ``codes``: the accuracy of always guessing it, the honest chance
    level of a split whose classes are unbalanced (1 / n_classes only for balanced ones)."""
    codes = np.asarray(codes)
    return float(np.bincount(codes).max() / len(codes)) if len(codes) else float("nan")


def _check_source(source: FeatureSource, n_classes: int) -> dict[str, int]:
    """The rows of each split; ValueError for too few classes or an empty split."""
    if n_classes < 2:
        raise ValueError(f"Diff-C: n_classes must be >= 2, got {n_classes!r}")
    sizes = {split: int(source.n(split)) for split in SPLITS}
    empty = [split for split, n in sizes.items() if n == 0]
    if empty:
        raise ValueError(f"Diff-C: empty split(s) {empty} (rows per split: {sizes})")
    return sizes


def _autocast(device: torch.device):
    """bf16 autocast on CUDA, none elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _rng_state() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class _OneHead:
    """A single-map source seen as a multi-head one with the head ``""``."""

    heads = ("",)

    def __init__(self, source: FeatureSource):
        self.source = source
        self.shapes = {"": (int(source.channels), *(int(v) for v in source.map_size))}

    def n(self, split: str) -> int:
        return self.source.n(split)

    @property
    def codes(self) -> dict:
        return self.source.codes

    @property
    def recipe(self) -> dict:
        return dict(getattr(self.source, "recipe", {}))

    def batches(self, split: str, batch_size: int, *, epoch: int, train: bool):
        for maps, targets in self.source.batches(split, batch_size, epoch=epoch, train=train):
            yield {"": maps}, targets


#: identity keys a checkpoint may predate, with the values every run before them had (a missing key must match one)
_BEFORE = {"lr_schedule": ("constant",), "lr_t_max": (None,), "conv_dropout": (0.0,), "augment_on": ("latents", "maps"),
           "noise": ("extraction",)}


class _Head:
    """One classifier of a multi-head run: its model, optimiser, learning-rate schedule, random stream (dropout) and
    record."""

    def __init__(self, name: str, shape: tuple[int, int, int], n_classes: int, settings: DiffCSettings,
                 device: torch.device, recipe: dict | None = None):
        self.name = name
        torch.manual_seed(settings.seed)  # as a run of this head alone: the same initial weights and dropout stream
        self.model = DiffC(shape[0], n_classes, settings.width, settings.dropout, settings.conv_dropout).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.sched = None if settings.t_max is None else \
            torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=settings.t_max)
        self.rng = _rng_state()
        self.run = {"epoch": 0, "curves": [], "best": None, "best_val": -1.0, "best_epoch": 0, "seconds": 0.0}
        # what a resumed run must share ("epochs" may grow; "refit" only adds a phase after the selection)
        self.identity = {k: v for k, v in asdict(settings).items() if k not in ("epochs", "refit", "lr_t_max")}
        self.identity.update(lr_t_max=settings.t_max, n_classes=n_classes, channels=int(shape[0]),
                             map_size=tuple(int(v) for v in shape[1:]), **(recipe or {}))
        self.loss_sum, self.correct, self.rows, self.seen, self.lr = 0.0, 0, 0, set(), settings.lr

    def state(self) -> dict:
        out = {**self.run, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "rng": self.rng,
               "identity": self.identity}
        return out | ({"scheduler": self.sched.state_dict()} if self.sched is not None else {})

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(state["scheduler"])
        self.rng = state["rng"]
        self.run = {k: state[k] for k in self.run}

    def differences(self, saved: dict) -> list[str]:
        """How a saved identity differs from this head's (a key it predates must hold a value of ``_BEFORE``)."""
        out = []
        for k, v in self.identity.items():
            if k in saved:
                if saved[k] != v:
                    out.append(f"{k}: {saved[k]!r} there, {v!r} here")
            elif k in _BEFORE and v not in _BEFORE[k]:
                out.append(f"{k}: {_BEFORE[k][0]!r} there (not recorded), {v!r} here")
        return out

    def step(self, maps: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimisation step on its own random stream (its dropout draws are those of a run of it alone)."""
        _set_rng_state(self.rng)
        with _autocast(maps.device):
            logits = self.model(maps)
        loss = F.cross_entropy(logits.float(), targets)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.rng = _rng_state()
        self.loss_sum += float(loss.detach()) * len(targets)
        self.correct += int((logits.argmax(1) == targets).sum())
        self.rows += len(targets)
        self.seen.update(targets.tolist())

    def curve(self, epoch: int) -> dict:
        """The record of the epoch just trained (1-based ``epoch``): its learning rate, train loss and accuracy."""
        return {"epoch": epoch, "lr": self.lr, "train_loss": self.loss_sum / self.rows,
                "train_accuracy": self.correct / self.rows}


@contextlib.contextmanager
def _names_batch_key_on_oom(batch_size: int, n_heads: int):
    """Out of memory while the classifiers train (a smaller batch would change the optimisation, so it is not backed
    off here): one error naming the keys to lower; the last epoch's checkpoint is kept, so a rerun resumes."""
    try:
        yield
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        raise torch.OutOfMemoryError(
            f"out of memory training {n_heads} Diff-C net(s) on batches of {batch_size}: lower classify.batch_size "
            f"(now {batch_size}), or set classify.group: one for one net per job, or classify.width ({exc})") from None


def _train_epoch_heads(heads: list[_Head], source, batch_size: int, epoch: int, device: torch.device,
                       n_classes: int, split: str = "train") -> None:
    """One pass over the shuffled, augmented ``split`` (train; ``TRAINVAL`` when refitting), every head stepping on
    its maps of each batch, then stepping its learning-rate schedule (once per epoch, as the public code does)."""
    for head in heads:
        head.model.train()
        head.loss_sum, head.correct, head.rows, head.seen = 0.0, 0, 0, set()
        head.lr = head.opt.param_groups[0]["lr"]
    for maps, targets in _no_single_rows(source.batches(split, batch_size, epoch=epoch, train=True)):
        check_targets(targets, n_classes, split)
        targets = targets.to(device)
        for head in heads:
            head.step(maps[head.name].to(device), targets)
    for head in heads:
        if head.sched is not None:
            head.sched.step()
    seen = heads[0].seen
    if len(seen) < 2:
        raise ValueError(f"Diff-C: the {split} split holds {len(seen)} class(es) ({sorted(seen)}); it needs at least 2")


def _no_single_rows(batches):
    """The batches ({head: maps}, targets) with a one-row batch joined to the one before it (BatchNorm cannot train
    on one row of a 1x1 map); every row is still seen once."""
    held = None
    for maps, targets in batches:
        if held is not None and len(targets) == 1:
            maps = {h: torch.cat([held[0][h], m]) for h, m in maps.items()}
            targets = torch.cat([held[1], targets])
            held = None
        if held is not None:
            yield held
        held = (maps, targets)
    if held is not None:
        yield held


@torch.no_grad()
def _accuracies(heads: list[_Head], source, split: str, batch_size: int, device: torch.device,
                n_classes: int) -> dict[str, float]:
    """Every head's share of the split's rows (in order, not augmented) whose arg-max class is the target."""
    correct, rows = dict.fromkeys([h.name for h in heads], 0), 0
    for head in heads:
        head.model.eval()
    for maps, targets in source.batches(split, batch_size, epoch=0, train=False):
        check_targets(targets, n_classes, split)
        for head in heads:
            with _autocast(device):
                logits = head.model(maps[head.name].to(device))
            correct[head.name] += int((logits.argmax(1).cpu() == targets).sum())
        rows += len(targets)
    return {name: c / rows for name, c in correct.items()}


def _load_heads_checkpoint(work_dir: Path, heads: list[_Head], epochs: int) -> dict | None:
    """The saved states of every head in ``work_dir``; ValueError if they belong to other heads, settings or data,
    or hold more epochs than asked for."""
    path = work_dir / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("heads", {})
    if sorted(saved) != sorted(h.name for h in heads):
        raise ValueError(f"Diff-C: {work_dir} holds a training state of heads {sorted(saved)}, not "
                         f"{sorted(h.name for h in heads)}; resume with the same heads, or delete {work_dir}")
    for head in heads:
        differ = head.differences(saved[head.name]["identity"])
        if differ:
            raise ValueError(f"Diff-C: {work_dir} holds a training state of other settings ({'; '.join(differ)}); "
                             f"resume with the same settings, or delete {work_dir} to start afresh")
    if state["epoch"] > epochs:
        raise ValueError(f"Diff-C: {work_dir} holds a training state of {state['epoch']} epochs, more than the "
                         f"{epochs} asked for; ask for at least {state['epoch']}, or delete {work_dir}")
    return state


def _refit(heads: list[_Head], source, settings: DiffCSettings, n_classes: int, device: torch.device,
           saved: dict | None, save, progress: bool, log: logging.Logger) -> list[_Head]:
    """New nets (the selection's initial weights and settings) trained on ``TRAINVAL``, each for its head's chosen
    epoch count: epoch e sees the batches, augmentation, noise and learning rate of epoch e of a run on train+val.
    ``saved``: the refit part of a checkpoint (used when it was made for the same chosen epochs); ``save(part)``
    writes the refit part after each epoch."""
    targets = {h.name: h.run["best_epoch"] for h in heads}
    fitted = [_Head(h.name, source.shapes[h.name], n_classes, settings, device, source_recipe(source))
              for h in heads]
    done = 0
    if saved is not None:
        if saved["targets"] == targets and saved["selection_epochs"] == settings.epochs:
            for head in fitted:
                head.restore(saved["heads"][head.name])
            done = saved["epoch"]
            log.info("Diff-C refit on train+val resumed after epoch %d", done)
        else:
            log.info("Diff-C: the saved refit was for other chosen epochs (%s after %d epochs); refitting afresh",
                     saved["targets"], saved["selection_epochs"])
    last = max(targets.values())
    bar = tqdm(range(done, last), desc="Diff-C refit", initial=done, total=last, disable=not progress)
    for epoch in bar:
        active = [head for head in fitted if epoch < targets[head.name]]
        with _names_batch_key_on_oom(settings.batch_size, len(active)):
            _train_epoch_heads(active, source, settings.batch_size, epoch, device, n_classes, split=TRAINVAL)
        for head in active:
            head.run["curves"].append(head.curve(epoch + 1))
            head.run["epoch"] = epoch + 1
            log.info("Diff-C %srefit epoch %d/%d on train+val: train loss %.4f, train accuracy %.4f",
                     f"{head.name} " if head.name else "", epoch + 1, targets[head.name], head.loss_sum / head.rows,
                     head.correct / head.rows)
        save({"targets": targets, "selection_epochs": settings.epochs, "epoch": epoch + 1,
              "heads": {h.name: h.state() for h in fitted}})
    return fitted


def source_recipe(source) -> dict:
    """How a source makes its training inputs (``recipe``; {} when it does not say), as JSON-friendly values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(getattr(source, "recipe", {})).items()}


def train_diffc_heads(source, n_classes: int, settings: DiffCSettings | None = None, *,
                      work_dir: str | Path | None = None, device: str | torch.device | None = None,
                      progress: bool = True, log: logging.Logger | None = None) -> dict[str, dict]:
    """Train one Diff-C per head of a multi-head source (``heads``: names; ``shapes``: head -> (C, H, W);
    ``n(split)``; ``batches`` yielding ({head: maps}, targets) of the same rows for every head), each exactly as
    ``train_diffc`` would train it alone: the same initial weights, batches, augmentation and dropout draws, its
    own optimiser and its own epoch chosen on val; the maps of a batch are made once for every head (one denoiser
    pass for every layer and timestep). Returns ``train_diffc``'s result per head. With ``work_dir`` every head's
    state is saved after each epoch in one checkpoint, and a later call resumes it."""
    settings = settings or DiffCSettings()
    log = log or logger
    sizes = _check_source(source, n_classes)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = source_recipe(source)
    heads = [_Head(name, source.shapes[name], n_classes, settings, device, recipe) for name in source.heads]
    ckpt = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    state = _load_heads_checkpoint(Path(work_dir), heads, settings.epochs) if work_dir is not None else None
    done, seconds = 0, 0.0
    if state is not None:
        for head in heads:
            head.restore(state["heads"][head.name])
        done, seconds = state["epoch"], state["seconds"]
        log.info("Diff-C resumed from %s after epoch %d", ckpt, done)
    t0 = time.time() - seconds

    def save(refit: dict | None = None) -> None:
        if ckpt is not None:
            save_checkpoint(ckpt, {"epoch": done, "seconds": time.time() - t0, "settings": asdict(settings),
                                   "heads": {h.name: h.state() for h in heads}} | ({"refit": refit} if refit else {}))

    log.info("Diff-C recipe: %s", {**{k: v for k, v in asdict(settings).items() if k != "lr_t_max"},
                                   "lr_t_max": settings.t_max, **recipe})
    bar = tqdm(range(done, settings.epochs), desc="Diff-C", initial=done, total=settings.epochs,
               disable=not progress)
    for epoch in bar:
        with _names_batch_key_on_oom(settings.batch_size, len(heads)):
            _train_epoch_heads(heads, source, settings.batch_size, epoch, device, n_classes)
            val = _accuracies(heads, source, "val", settings.batch_size, device, n_classes)
        for head in heads:
            if val[head.name] > head.run["best_val"]:
                head.run.update(best=_cpu_copy(head.model.state_dict()), best_val=val[head.name],
                                best_epoch=epoch + 1)
            head.run["curves"].append({**head.curve(epoch + 1), "val_accuracy": val[head.name]})
            head.run.update(epoch=epoch + 1, seconds=time.time() - t0)
            log.info("Diff-C %sepoch %d/%d: lr %.3g, train loss %.4f, train accuracy %.4f, val accuracy %.4f",
                     f"{head.name} " if head.name else "", epoch + 1, settings.epochs, head.lr,
                     head.loss_sum / head.rows, head.correct / head.rows, val[head.name])
        done = epoch + 1
        save()
        bar.set_postfix(val=" ".join(f"{v:.3f}" for v in val.values()))
    if settings.refit:
        scored = _refit(heads, source, settings, n_classes, device, (state or {}).get("refit"), save, progress, log)
    else:
        for head in heads:
            head.model.load_state_dict(head.run["best"])
        scored = heads
    test = _accuracies(scored, source, "test", settings.batch_size, device, n_classes)
    out = {}
    for head, final in zip(heads, scored):
        log.info("Diff-C %s: best val accuracy %.4f at epoch %d, test accuracy %.4f%s", head.name or "",
                 head.run["best_val"], head.run["best_epoch"], test[head.name],
                 " (refit on train+val)" if settings.refit else "")
        out[head.name] = {"val_accuracy": head.run["best_val"], "test_accuracy": test[head.name],
                          "best_epoch": head.run["best_epoch"], "epochs": settings.epochs,
                          "curves": head.run["curves"], "seconds": round(time.time() - t0, 2),
                          "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"],
                          "majority_accuracy": majority_share(source.codes["test"]), "refit": settings.refit,
                          "lr_schedule": settings.lr_schedule, "lr_t_max": settings.t_max,
                          "dropout": settings.dropout, "conv_dropout": settings.conv_dropout, **recipe}
        if settings.refit:
            out[head.name].update(n_refit=source.n(TRAINVAL), refit_curves=final.run["curves"])
    return out


def train_diffc(source: FeatureSource, n_classes: int, settings: DiffCSettings | None = None, *,
                work_dir: str | Path | None = None, device: str | torch.device | None = None, progress: bool = True,
                log: logging.Logger | None = None) -> dict:
    """Train Diff-C on ``source``; the epoch of best val accuracy (ties: the earlier) is kept, and only its model is
    evaluated on the test split, once, at the end; with ``settings.refit`` a new net trained on train + val for that
    many epochs is evaluated instead (``refit_curves``, ``n_refit`` in the result).

    Seeded (``settings.seed`` before the model is built; data order from the source). With ``work_dir`` the state is
    saved after every epoch and a later call resumes from it (asking for more epochs extends the run), giving the
    same numbers as an uninterrupted run. Runs on ``device``: by default one GPU when present (bf16 autocast), else
    the CPU. Returns the accuracies, the best epoch (1-based), per-epoch curves, seconds of training over all runs
    and the rows of each split.

    Bad input is a ValueError: n_classes < 2 or an empty split before training; a target outside [0, n_classes)
    at the batch that holds it; a train split of fewer than 2 classes after the first epoch (a source lists no
    labels, so they are seen as they arrive).
    """
    return train_diffc_heads(_OneHead(source), n_classes, settings, work_dir=work_dir, device=device,
                             progress=progress, log=log)[""]
