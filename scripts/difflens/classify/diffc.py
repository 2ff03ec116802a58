"""Diff-C (Revelio, section 1.5 of docs/reference.md): a small convolutional classifier on the spatial map of one
block at one timestep, trained with the epoch picked on the validation split and the test split read once.

The training loop reads its data through a **feature source**, any object with this shape (``FeatureSource``):

* ``channels: int`` -- C of one map; ``map_size: tuple[int, int]`` -- its (H, W);
* ``n(split) -> int`` -- the rows of a split ("train", "val", "test");
* ``batches(split, batch_size, *, epoch, train)`` -- an iterator of ``(maps, targets)``: maps (b, C, H, W)
  float32, integer class targets (b,). With ``train=True`` the rows come shuffled by (the source's seed,
  ``epoch``) and augmented as the source sees fit; with ``train=False`` in row order and not augmented. The same
  (seed, epoch) must give the same batches, so that a resumed training repeats an uninterrupted one.

``TensorSource`` is the in-memory source (tests, notebooks); the pipeline's sources (cached maps read through
``difflens.extract.store``, denoiser features computed on the fly) implement the same protocol.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

SPLITS = ("train", "val", "test")
CHECKPOINT = "diffc_state.pt"

logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """What ``train_diffc`` reads: maps and class targets of the splits, in seeded batches (module docstring)."""

    channels: int
    map_size: tuple[int, int]

    def n(self, split: str) -> int:
        ...

    def batches(self, split: str, batch_size: int, *, epoch: int,
                train: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


# ---- model --------------------------------------------------------------------------------------------------------
def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3x3 convolution (padding 1; no bias, BatchNorm follows) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class DiffC(nn.Module):
    """Input BatchNorm (no affine) -> conv C->width -> three stride-2 convs width->width -> global mean -> dropout ->
    linear to the classes; every conv with BatchNorm and ReLU. Any (C, H, W) map works, 4x4 included."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 1024, dropout: float = 0.5):
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("n_classes", n_classes, 2), ("width", width, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"DiffC: {name} must be an integer >= {low}, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"DiffC: dropout must be in [0, 1), got {dropout!r}")
        self.norm = nn.BatchNorm2d(in_channels, affine=False)
        self.features = nn.Sequential(_conv_bn_relu(in_channels, width, 1),
                                      *[_conv_bn_relu(width, width, 2) for _ in range(3)])
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

    No augmentation; training batches are shuffled by ``epoch_generator(seed, epoch)``.
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

    def n(self, split: str) -> int:
        if split not in self.maps:
            raise ValueError(f"TensorSource: no split {split!r}; it holds {sorted(self.maps)}")
        return len(self.maps[split])

    def batches(self, split: str, batch_size: int, *, epoch: int,
                train: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.n(split)
        order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)) if train else torch.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            yield self.maps[split][rows].float(), self.targets[split][rows].long()


# ---- training -----------------------------------------------------------------------------------------------------
@dataclass
class DiffCSettings:
    """Optimisation settings of Diff-C (paper: AdamW 1e-4, 30 epochs, batch 16, width 1024, dropout 0.5)."""

    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 16
    width: int = 1024
    dropout: float = 0.5
    seed: int = 0

    def __post_init__(self):
        checks = {"epochs": self.epochs >= 1, "lr": self.lr > 0, "weight_decay": self.weight_decay >= 0,
                  "batch_size": self.batch_size >= 2, "width": self.width >= 1, "dropout": 0 <= self.dropout < 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("Diff-C settings: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad) +
                             " out of range (epochs >= 1, lr > 0, weight_decay >= 0, batch_size >= 2 "
                             "(BatchNorm), width >= 1, 0 <= dropout < 1)")


def check_targets(targets: torch.Tensor, n_classes: int, split: str) -> None:
    """Raise ValueError unless ``targets`` are integers in [0, n_classes)."""
    if targets.is_floating_point():
        raise ValueError(f"Diff-C: {split} targets must be integers, got {targets.dtype}")
    if len(targets) and int(targets.min()) < 0:
        raise ValueError(f"Diff-C: {split} targets must be >= 0, got {int(targets.min())}")
    if len(targets) and int(targets.max()) >= n_classes:
        raise ValueError(f"Diff-C: a {split} target is {int(targets.max())} but n_classes is {n_classes}; it must be "
                         f"at least the largest target + 1")


def _check_source(source: FeatureSource, n_classes: int) -> dict[str, int]:
    """The rows of each split; ValueError for too few classes or an empty split."""
    if n_classes < 2:
        raise ValueError(f"Diff-C: n_classes must be >= 2, got {n_classes!r}")
    sizes = {split: int(source.n(split)) for split in SPLITS}
    empty = [split for split, n in sizes.items() if n == 0]
    if empty:
        raise ValueError(f"Diff-C: empty split(s) {empty} (rows per split: {sizes})")
    return sizes


def _no_single_rows(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches with a one-row batch joined to the one before it (BatchNorm cannot train on one row of a 1x1
    map); every row is still seen once."""
    held = None
    for maps, targets in batches:
        if held is not None and len(targets) == 1:
            maps, targets = torch.cat([held[0], maps]), torch.cat([held[1], targets])
            held = None
        if held is not None:
            yield held
        held = (maps, targets)
    if held is not None:
        yield held


def _autocast(device: torch.device):
    """bf16 autocast on CUDA, none elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_epoch(model: DiffC, opt: torch.optim.Optimizer, source: FeatureSource, batch_size: int, epoch: int,
                device: torch.device) -> tuple[float, float]:
    """One pass over the shuffled, augmented train split: (mean loss, accuracy) over its rows."""
    model.train()
    n_classes = model.head.out_features
    loss_sum, correct, rows, seen = 0.0, 0, 0, set()
    for maps, targets in _no_single_rows(source.batches("train", batch_size, epoch=epoch, train=True)):
        check_targets(targets, n_classes, "train")
        seen.update(targets.tolist())
        maps, targets = maps.to(device), targets.to(device)
        with _autocast(device):
            logits = model(maps)
        loss = F.cross_entropy(logits.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        rows += len(targets)
    if len(seen) < 2:
        raise ValueError(f"Diff-C: the train split holds {len(seen)} class(es) ({sorted(seen)}); it needs at least 2")
    return loss_sum / rows, correct / rows


@torch.no_grad()
def accuracy(model: DiffC, source: FeatureSource, split: str, batch_size: int, device: torch.device) -> float:
    """Share of the split's rows (in order, not augmented) whose arg-max class is the target."""
    model.eval()
    correct, rows = 0, 0
    for maps, targets in source.batches(split, batch_size, epoch=0, train=False):
        check_targets(targets, model.head.out_features, split)
        with _autocast(device):
            logits = model(maps.to(device))
        correct += int((logits.argmax(1).cpu() == targets).sum())
        rows += len(targets)
    return correct / rows


def _identity(source: FeatureSource, n_classes: int, settings: DiffCSettings) -> dict:
    """What a checkpoint must share with the run that resumes it: every setting but ``epochs``, and the data shape."""
    out = {k: v for k, v in asdict(settings).items() if k != "epochs"}
    return {**out, "n_classes": n_classes, "channels": int(source.channels),
            "map_size": tuple(int(s) for s in source.map_size)}


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


def load_checkpoint(work_dir: Path, identity: dict, epochs: int) -> dict | None:
    """The checkpoint in ``work_dir`` if there is one; ValueError if it belongs to other settings or data, or holds
    more epochs than asked for."""
    path = work_dir / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state["identity"]
    differ = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in identity.items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"Diff-C: {work_dir} holds a training state of other settings ({'; '.join(differ)}); "
                         f"resume with the same settings, or delete {work_dir} to start afresh")
    if state["epoch"] > epochs:
        raise ValueError(f"Diff-C: {work_dir} holds a training state of {state['epoch']} epochs, more than the "
                         f"{epochs} asked for; ask for at least {state['epoch']}, or delete {work_dir}")
    return state


def train_diffc(source: FeatureSource, n_classes: int, settings: DiffCSettings | None = None, *,
                work_dir: str | Path | None = None, device: str | torch.device | None = None, progress: bool = True,
                log: logging.Logger | None = None) -> dict:
    """Train Diff-C on ``source``; the epoch of best val accuracy (ties: the earlier) is kept, and only its model is
    evaluated on the test split, once, at the end.

    Seeded (``settings.seed`` before the model is built; data order from the source). With ``work_dir`` the state is
    saved after every epoch and a later call resumes from it (asking for more epochs extends the run), giving the
    same numbers as an uninterrupted run. Runs on ``device``: by default one GPU when present (bf16 autocast), else
    the CPU. Returns the accuracies, the best epoch (1-based), per-epoch curves, seconds of training over all runs
    and the rows of each split.

    Bad input is a ValueError: n_classes < 2 or an empty split before training; a target outside [0, n_classes)
    at the batch that holds it; a train split of fewer than 2 classes after the first epoch (a source lists no
    labels, so they are seen as they arrive).
    """
    settings = settings or DiffCSettings()
    log = log or logger
    sizes = _check_source(source, n_classes)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    identity = _identity(source, n_classes, settings)
    torch.manual_seed(settings.seed)
    model = DiffC(source.channels, n_classes, settings.width, settings.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    run = {"epoch": 0, "curves": [], "best": None, "best_val": -1.0, "best_epoch": 0, "seconds": 0.0}
    ckpt = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    state = load_checkpoint(Path(work_dir), identity, settings.epochs) if work_dir is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        run = {k: state[k] for k in run}
        log.info("Diff-C resumed from %s after epoch %d", ckpt, run["epoch"])
    t0 = time.time() - run["seconds"]
    bar = tqdm(range(run["epoch"], settings.epochs), desc="Diff-C", initial=run["epoch"], total=settings.epochs,
               disable=not progress)
    for epoch in bar:
        train_loss, train_acc = train_epoch(model, opt, source, settings.batch_size, epoch, device)
        val_acc = accuracy(model, source, "val", settings.batch_size, device)
        if val_acc > run["best_val"]:
            run.update(best=_cpu_copy(model.state_dict()), best_val=val_acc, best_epoch=epoch + 1)
        run["curves"].append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc,
                              "val_accuracy": val_acc})
        run.update(epoch=epoch + 1, seconds=time.time() - t0)
        if ckpt is not None:
            save_checkpoint(ckpt, {**run, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "rng": _rng_state(), "identity": identity, "settings": asdict(settings)})
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_acc:.3f}")
        log.info("Diff-C epoch %d/%d: train loss %.4f, train accuracy %.4f, val accuracy %.4f", epoch + 1,
                 settings.epochs, train_loss, train_acc, val_acc)
    model.load_state_dict(run["best"])
    test_acc = accuracy(model, source, "test", settings.batch_size, device)
    log.info("Diff-C: best val accuracy %.4f at epoch %d, test accuracy %.4f", run["best_val"], run["best_epoch"],
             test_acc)
    return {"val_accuracy": run["best_val"], "test_accuracy": test_acc, "best_epoch": run["best_epoch"],
            "epochs": settings.epochs, "curves": run["curves"], "seconds": round(time.time() - t0, 2),
            "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"]}
