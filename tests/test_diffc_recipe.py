"""Diff-C's recipe options (classify.lr_schedule / lr_t_max, conv_dropout, augment_on, noise, refit): each does what
the public code does where configs/revelio.yaml turns it on, and config.yaml keeps the behaviour from before them.

Synthetic quadrant maps for the training loop (tests/test_classify.py); the session's tiny shapes world and its
reference extraction (tests/test_extraction.py: 40 images, seed 3) for the on-the-fly sources."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T

from difflens.classify import diffc, sources
from difflens.classify.diffc import TRAINVAL, DiffC, DiffCSettings, TensorSource, train_diffc
from difflens.classify.sources import CachedMaps, OnTheFlyMaps, check_recipe, pixel_augment
from difflens.config import load_config
from difflens.data.common import Dataset
from difflens.extract.store import FeatureStore
from difflens.seeding import derive_seed
from test_classify import quadrant_source
from test_extraction import SETTINGS, extracted, load_tiny, tiny_world

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"train": 32, "val": 16, "test": 16}

pytestmark = pytest.mark.usefixtures("two_threads")


# ---- learning-rate schedule ---------------------------------------------------------------------------------------
def test_cosine_schedule_steps_once_per_epoch_as_cosine_annealing_lr(tmp_path):
    """lr of each epoch (4 batches each) = CosineAnnealingLR(T_max 8) stepped once per epoch, i.e.
    lr (1 + cos(pi e / 8)) / 2 for epoch e = 0..4 (stepped per batch it would reach lr / 2 at epoch 1); T_max null
    = the epochs; constant keeps lr; a cosine run resumed after 2 epochs gives the straight run's numbers."""
    source = quadrant_source(ROWS)
    cosine = DiffCSettings(epochs=5, lr=1e-3, width=4, batch_size=8, lr_schedule="cosine", lr_t_max=8)
    result = train_diffc(source, 4, cosine, progress=False)
    want = [1e-3 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(5)]
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.AdamW([torch.zeros(1)], lr=1e-3), T_max=8)
    torch_lrs = []
    for _ in range(5):
        torch_lrs.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    got = [c["lr"] for c in result["curves"]]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got, torch_lrs, rtol=1e-12)
    assert result["lr_schedule"] == "cosine" and result["lr_t_max"] == 8
    default_t = train_diffc(source, 4, DiffCSettings(**{**vars(cosine), "lr_t_max": None, "epochs": 3}),
                            progress=False)
    np.testing.assert_allclose([c["lr"] for c in default_t["curves"]],
                               [1e-3 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rtol=1e-12)
    constant = train_diffc(source, 4, DiffCSettings(epochs=3, lr=1e-3, width=4, batch_size=8), progress=False)
    assert [c["lr"] for c in constant["curves"]] == [1e-3] * 3 and constant["lr_t_max"] is None
    train_diffc(source, 4, DiffCSettings(**{**vars(cosine), "epochs": 2}), work_dir=tmp_path, progress=False)
    resumed = train_diffc(source, 4, cosine, work_dir=tmp_path, progress=False)
    keys = ("curves", "val_accuracy", "test_accuracy", "best_epoch")
    assert {k: resumed[k] for k in keys} == {k: result[k] for k in keys}


# ---- Dropout2d ----------------------------------------------------------------------------------------------------
def test_conv_dropout_puts_dropout2d_after_each_conv_block_and_none_at_zero():
    with_drop, without = DiffC(5, 3, width=8, dropout=0.0, conv_dropout=0.3), DiffC(5, 3, width=8, dropout=0.0)
    drops = [m for m in with_drop.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(drops) == 4 and {d.p for d in drops} == {0.3}
    assert all(isinstance(block[-1], torch.nn.Dropout2d) and isinstance(block[-2], torch.nn.ReLU)
               for block in with_drop.features)
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in without.modules())
    assert list(with_drop.state_dict()) == list(without.state_dict())  # the same parameter names either way
    # in training whole channels of a block's output are zeroed (about 30% of them), and the rest scaled by 1/0.7
    torch.manual_seed(0)
    out = with_drop.train().features[0](with_drop.norm(torch.randn(16, 5, 6, 6)))
    dead = (out == 0).flatten(2).all(-1).float().mean()
    assert 0.2 < float(dead) < 0.4, float(dead)
    head = diffc._Head("", (5, 6, 6), 3, DiffCSettings(width=8, conv_dropout=0.25), torch.device("cpu"))
    assert {m.p for m in head.model.modules() if isinstance(m, torch.nn.Dropout2d)} == {0.25}


# ---- refit on train + val -----------------------------------------------------------------------------------------
class Recording:
    """A source that records the (split, epoch, train) of every batches() call and the maps it gave."""

    def __init__(self, source: TensorSource):
        self.source, self.calls = source, []
        self.channels, self.map_size, self.codes = source.channels, source.map_size, source.codes

    def n(self, split):
        return self.source.n(split)

    def batches(self, split, batch_size, *, epoch, train):
        call = (split, epoch, train, [])
        self.calls.append(call)
        for maps, y in self.source.batches(split, batch_size, epoch=epoch, train=train):
            call[3].append(maps)
            yield maps, y


def row_keys(maps: torch.Tensor) -> list[tuple]:
    """Each map row's first four values: a key of its row (the quadrant maps are random)."""
    return sorted(tuple(m.flatten()[:4].tolist()) for m in maps)


def test_refit_trains_a_new_net_on_train_and_val_for_the_chosen_epochs(monkeypatch):
    """Val accuracies scripted to peak at epoch 2 of 4: a new net (the selection's initial weights) trains 2 epochs
    on every train and val row, and only it reads the test split, once; without refit the chosen net does."""
    scripted = iter([0.5, 0.9, 0.7, 0.8])
    reads = []
    accuracies = diffc._accuracies

    def spy(heads, source, split, batch_size, device, n_classes):
        if split == "test":
            reads.append([p.detach().clone() for p in heads[0].model.parameters()])
            return accuracies(heads, source, split, batch_size, device, n_classes)
        return {"": next(scripted)}

    monkeypatch.setattr(diffc, "_accuracies", spy)
    source = Recording(quadrant_source({"train": 48, "val": 16, "test": 16}))
    settings = DiffCSettings(epochs=4, lr=1e-3, width=8, batch_size=16, refit=True)
    result = train_diffc(source, 4, settings, progress=False)
    refit_calls = [c for c in source.calls if c[0] == TRAINVAL]
    assert [(c[1], c[2]) for c in refit_calls] == [(0, True), (1, True)]
    every = row_keys(torch.cat([source.source.maps["train"], source.source.maps["val"]]))
    for call in refit_calls:
        assert row_keys(torch.cat(call[3])) == every
    assert [c[0] for c in source.calls].count("test") == 1 and source.calls[-1][0] == "test"
    assert len(reads) == 1 and result["best_epoch"] == 2 and result["n_refit"] == 64
    assert [c["epoch"] for c in result["refit_curves"]] == [1, 2] and result["refit"] is True
    assert len(result["curves"]) == 4
    # the scored net is not the selection's net of epoch 2, trained on train alone
    scripted = iter([0.5, 0.9, 0.7, 0.8])
    plain = train_diffc(Recording(quadrant_source({"train": 48, "val": 16, "test": 16})), 4,
                        DiffCSettings(**{**vars(settings), "refit": False}), progress=False)
    assert len(reads) == 2 and not all(torch.equal(a, b) for a, b in zip(reads[0], reads[1]))
    assert plain["refit"] is False and "n_refit" not in plain


def test_refit_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """A run stopped in its second refit epoch and rerun == the straight run (selection, refit curves and test);
    a finished run called again trains nothing."""
    accuracies = diffc._accuracies

    def val_peaks_at_epoch_2(heads, source, split, *args):  # by the epoch just trained: the same when resumed
        if split == "val":
            return {"": [0.3, 0.6, 0.5][heads[0].run["epoch"]]}
        return accuracies(heads, source, split, *args)

    monkeypatch.setattr(diffc, "_accuracies", val_peaks_at_epoch_2)
    source = quadrant_source({"train": 48, "val": 16, "test": 16})
    settings = DiffCSettings(epochs=3, lr=3e-3, width=8, batch_size=16, refit=True, lr_schedule="cosine", seed=2)
    straight = train_diffc(source, 4, settings, progress=False)
    assert straight["best_epoch"] == 2 and len(straight["refit_curves"]) == 2
    epochs = diffc._train_epoch_heads

    def stop_in_second_refit_epoch(heads, source, batch_size, epoch, device, n_classes, split="train"):
        if split == TRAINVAL and epoch == 1:
            raise KeyboardInterrupt
        return epochs(heads, source, batch_size, epoch, device, n_classes, split)

    monkeypatch.setattr(diffc, "_train_epoch_heads", stop_in_second_refit_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_diffc(source, 4, settings, work_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / diffc.CHECKPOINT, weights_only=True)["refit"]["epoch"] == 1
    monkeypatch.setattr(diffc, "_train_epoch_heads", epochs)
    keys = ("curves", "refit_curves", "val_accuracy", "test_accuracy", "best_epoch")
    resumed = train_diffc(source, 4, settings, work_dir=tmp_path, progress=False)
    assert {k: resumed[k] for k in keys} == {k: straight[k] for k in keys}
    monkeypatch.setattr(diffc, "_train_epoch_heads", lambda *a, **k: pytest.fail("a finished run trained again"))
    again = train_diffc(source, 4, settings, work_dir=tmp_path, progress=False)
    assert {k: again[k] for k in keys} == {k: straight[k] for k in keys}


# ---- on-the-fly sources: pixel augmentation, per-epoch noise -------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    paths = tiny_world(tmp_path_factory)
    return {"store": FeatureStore(extracted(tmp_path_factory)), "model": load_tiny(str(paths["model"])),
            "data": Dataset.load(paths["data"])}


def live(world, **kw) -> OnTheFlyMaps:
    return OnTheFlyMaps(world["store"], world["model"], "tiny", "shapes", "mid_block", 25, seed=SETTINGS["seed"],
                        **{"augment": (), **kw})


def cat(batches) -> torch.Tensor:
    return torch.cat([maps for maps, _ in batches])


def test_pixel_augment_is_torchvisions_public_code_transform(world):
    """The crop and flip of ``pixel_augment`` are torchvision's RandomResizedCrop(R, scale=(0.8, 1)) and
    RandomHorizontalFlip(0.5) (the public code's constants.py), drawn from the seed: pixel for pixel."""
    image = world["data"].load_image(world["data"].samples["sample_id"][0])
    r = world["model"].resolution
    public = T.Compose([T.RandomResizedCrop(r, scale=(0.8, 1.0)), T.RandomHorizontalFlip(p=0.5)])
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        want = np.asarray(public(image))
        got = np.asarray(pixel_augment(image, r, ("crop", "flip"), seed))
        np.testing.assert_array_equal(got, want)
        plain = np.asarray(pixel_augment(image, r, ("crop",), seed))
        flips += not np.array_equal(plain, got)
        assert got.shape == (r, r, 3)
    assert 2 <= flips <= 10  # about half of them flipped


def test_pixel_augmentation_changes_train_images_only_and_is_seeded(world):
    """augment_on pixels: the training maps differ from the un-augmented ones in most rows and are the same for the
    same (seed, epoch), whatever the batch size; other epochs differ; val, test and train read with train=False
    are extraction's maps exactly."""
    plain = live(world)
    pixels = live(world, augment=("crop", "flip"), augment_on="pixels", images=world["data"])
    assert pixels.recipe == {"augment": ["crop", "flip"], "augment_on": "pixels", "noise": "extraction"}
    for split in ("val", "test", "train"):
        assert torch.equal(cat(pixels.batches(split, 8, epoch=3, train=False)),
                           cat(plain.batches(split, 8, epoch=3, train=False))), split
    base = cat(plain.batches("train", 8, epoch=0, train=True))  # the same row order: (seed, epoch)
    aug = cat(pixels.batches("train", 8, epoch=0, train=True))
    changed = [not torch.allclose(a, b, atol=1e-3) for a, b in zip(aug, base)]
    assert sum(changed) >= 0.8 * len(changed), sum(changed)
    again = live(world, augment=("crop", "flip"), augment_on="pixels", images=world["data"])
    torch.testing.assert_close(cat(again.batches("train", 5, epoch=0, train=True)), aug, atol=2e-3, rtol=2e-3)
    other = cat(pixels.batches("train", 8, epoch=1, train=True))
    order0, order1 = (pixels._order("train", e, True) for e in (0, 1))
    by_row = {int(i): m for i, m in zip(order1, other)}
    assert sum(not torch.allclose(m, by_row[int(i)], atol=1e-3) for i, m in zip(order0, aug)) >= 0.8 * len(aug)
    with pytest.raises(ValueError, match="classify.augment_on: pixels needs the data set's images"):
        live(world, augment=("crop",), augment_on="pixels")


def test_per_epoch_noise_is_new_each_epoch_and_fixed_per_epoch_and_sample(world):
    """noise per_epoch: a row's training maps differ between epochs and from extraction's; for one (epoch, row)
    they are the same in any batch (size, order, company); val and test keep extraction's noise exactly."""
    extraction = live(world)
    fresh = live(world, noise="per_epoch")
    idx = np.arange(12)
    epoch0, epoch1 = fresh._maps("train", idx, None, 0), fresh._maps("train", idx, None, 1)
    saved = extraction._maps("train", idx, None, 0)
    for a, b in ((epoch0, epoch1), (epoch0, saved)):
        assert all(not torch.allclose(x, y, atol=1e-2) for x, y in zip(a, b))
    torch.testing.assert_close(fresh._maps("train", idx[[7, 2, 9]], None, 0), epoch0[[7, 2, 9]], atol=2e-3,
                               rtol=2e-3)
    small, large = (cat(fresh.batches("train", size, epoch=4, train=True)) for size in (3, 16))
    torch.testing.assert_close(small, large, atol=2e-3, rtol=2e-3)
    for split in ("val", "test"):
        assert torch.equal(cat(fresh.batches(split, 8, epoch=4, train=False)),
                           cat(extraction.batches(split, 8, epoch=4, train=False))), split
    # the noise of (epoch, row) is seeded by (seed, epoch): another epoch's seed gives another noise
    assert derive_seed(SETTINGS["seed"], "diffc_noise", 0) != derive_seed(SETTINGS["seed"], "diffc_noise", 1)


def test_cached_maps_say_they_keep_extractions_noise(world, caplog, monkeypatch):
    monkeypatch.setattr(sources, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="difflens.classify.sources"):
        cached = CachedMaps(world["store"], "tiny", "shapes", "mid_block", 25, augment=("crop",), noise="per_epoch",
                            augment_on="pixels")
    assert "cached maps carry extraction's noise" in caplog.text
    assert "cached maps are augmented as maps (['crop'])" in caplog.text
    assert cached.recipe == {"augment": ["crop"], "augment_on": "maps", "noise": "extraction"}
    plain = CachedMaps(world["store"], "tiny", "shapes", "mid_block", 25, augment=())
    assert torch.equal(cat(cached.batches("val", 8, epoch=0, train=False)),
                       cat(plain.batches("val", 8, epoch=0, train=False)))


def test_sources_read_train_and_val_as_one_split(world):
    """TRAINVAL holds the train rows, then the val rows, in both sources; its training order is seeded."""
    for source in (live(world), CachedMaps(world["store"], "tiny", "shapes", "mid_block", 25, augment=())):
        n_train, n_val = source.n("train"), source.n("val")
        assert source.n(TRAINVAL) == n_train + n_val
        rows = cat(source.batches(TRAINVAL, 7, epoch=0, train=False))
        parts = torch.cat([cat(source.batches(s, 7, epoch=0, train=False)) for s in ("train", "val")])
        torch.testing.assert_close(rows, parts, atol=2e-3, rtol=2e-3)
        shuffled = cat(source.batches(TRAINVAL, 7, epoch=2, train=True))
        order = source._order(TRAINVAL, 2, True)
        torch.testing.assert_close(shuffled, rows[torch.from_numpy(order)], atol=2e-3, rtol=2e-3)


# ---- settings, checkpoints, configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, key", [
    ({"lr_schedule": "step"}, "classify.lr_schedule"),
    ({"lr_schedule": "cosine", "lr_t_max": 0}, "classify.lr_t_max"),
    ({"lr_t_max": 90}, "classify.lr_t_max"),  # set without the cosine schedule
    ({"conv_dropout": 1.0}, "classify.conv_dropout"),
    ({"refit": "yes"}, "classify.refit"),
])
def test_bad_settings_name_their_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DiffCSettings(**kwargs)


def test_bad_recipe_values_name_their_config_key():
    with pytest.raises(ValueError, match=r"classify\.augment_on: 'voxels'"):
        check_recipe("voxels", "extraction")
    with pytest.raises(ValueError, match=r"classify\.noise: 'fresh'"):
        check_recipe("latents", "fresh")


def test_checkpoints_of_another_recipe_are_refused(tmp_path):
    """A constant-lr checkpoint is not resumed with cosine; one saved before these options existed (no such keys
    in its identity) resumes only with the values every run had then."""
    source = quadrant_source({"train": 16, "val": 8, "test": 8})
    settings = DiffCSettings(epochs=1, lr=1e-3, width=4, batch_size=8)
    train_diffc(source, 4, settings, work_dir=tmp_path, progress=False)
    cosine = DiffCSettings(**{**vars(settings), "epochs": 2, "lr_schedule": "cosine"})
    with pytest.raises(ValueError, match=r"lr_schedule: 'constant' there, 'cosine' here"):
        train_diffc(source, 4, cosine, work_dir=tmp_path, progress=False)
    path = tmp_path / diffc.CHECKPOINT
    state = torch.load(path, weights_only=True)
    for key in ("lr_schedule", "lr_t_max", "conv_dropout"):
        del state["heads"][""]["identity"][key]
    diffc.save_checkpoint(path, state)
    with pytest.raises(ValueError, match=r"lr_schedule: 'constant' there \(not recorded\), 'cosine' here"):
        train_diffc(source, 4, cosine, work_dir=tmp_path, progress=False)
    resumed = train_diffc(source, 4, DiffCSettings(**{**vars(settings), "epochs": 2}), work_dir=tmp_path,
                          progress=False)
    assert len(resumed["curves"]) == 2


def test_configs_set_the_recipe():
    """config.yaml keeps the behaviour from before these options; configs/revelio.yaml has the public code's."""
    demo = load_config(ROOT / "config.yaml")["classify"]
    assert {k: demo[k] for k in ("lr_schedule", "lr_t_max", "conv_dropout", "augment_on", "noise", "refit")} == \
        {"lr_schedule": "constant", "lr_t_max": None, "conv_dropout": 0.0, "augment_on": "latents",
         "noise": "extraction", "refit": False}
    paper = load_config(ROOT / "configs" / "revelio.yaml")["classify"]
    assert {k: paper[k] for k in ("epochs", "lr", "batch_size", "width", "lr_schedule", "lr_t_max", "dropout",
                                  "conv_dropout", "augment", "augment_on", "noise", "refit", "mode")} == \
        {"epochs": 30, "lr": 1e-4, "batch_size": 16, "width": 1024, "lr_schedule": "cosine", "lr_t_max": 90,
         "dropout": 0.0, "conv_dropout": 0.0, "augment": ["crop", "flip"], "augment_on": "pixels",
         "noise": "per_epoch", "refit": True, "mode": "on_the_fly"}
    DiffCSettings(**{k: paper[k] for k in ("epochs", "lr", "batch_size", "width", "lr_schedule", "lr_t_max",
                                           "dropout", "conv_dropout", "refit")})
