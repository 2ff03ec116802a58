"""The classifiers' feature sources (difflens.classify.sources) on the session's reference extraction (see
tests/test_extraction.py: 40 images, 3 shards, seed 3, maps saved): cached and on-the-fly maps are the same."""
from __future__ import annotations

import pytest
import torch

from difflens.classify.sources import CachedMaps, OnTheFlyMaps, TargetError, augment, target_codes
from difflens.extract.store import FeatureError, FeatureStore
from test_extraction import SETTINGS, extracted, load_tiny, tiny_world


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return FeatureStore(extracted(tmp_path_factory))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny(str(tiny_world(tmp_path_factory)["model"]))


@pytest.mark.parametrize("layer,timestep,target", [("up_ft1", 500, "label"), ("mid_block", 25, "colour")])
def test_cached_and_on_the_fly_maps_are_identical(store, model, layer, timestep, target):
    seed = SETTINGS["seed"]  # the extraction's: the on-the-fly noise is that of the saved maps
    cached = CachedMaps(store, "tiny", "shapes", layer, timestep, target=target, seed=seed, augment=())
    live = OnTheFlyMaps(store, model, "tiny", "shapes", layer, timestep, target=target, seed=seed, augment=())
    assert (cached.channels, cached.map_size) == (live.channels, live.map_size)
    assert cached.class_names == live.class_names and cached.n("train") == live.n("train") > 20
    # each split in row order, and the training order, which is seeded by (seed, epoch): the same in both
    for split, train in (("train", False), ("val", False), ("test", False), ("train", True)):
        pairs = list(zip(cached.batches(split, 8, epoch=1, train=train), live.batches(split, 8, epoch=1, train=train)))
        assert len(pairs) == -(-cached.n(split) // 8), split
        for (a, ya), (b, yb) in pairs:
            torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # float16 storage: at most one rounding step
            assert torch.equal(ya, yb)


def test_targets_codes_and_undefined_rows(store):
    rows = store.rows("tiny", "shapes", "mid_block", 25)
    codes, names = target_codes(rows, "axis")
    assert names == ["horizontal", "vertical"] and ((codes == -1) == (rows["n_objects"] == 1)).all()
    codes, names = target_codes(rows, "label")
    assert [names[c] for c in codes] == list(rows["label_name"])
    source = CachedMaps(store, "tiny", "shapes", "mid_block", 25, target="axis", augment=())
    assert source.n("train") == int(((rows["split"] == "train") & (rows["n_objects"] == 2)).sum())
    with pytest.raises(TargetError, match=r"unknown target column 'colur'.*'colour'"):
        target_codes(rows, "colur")


def test_bad_sources_fail_clearly(store, monkeypatch):
    with pytest.raises(FeatureError, match="no activations"):
        CachedMaps(store, "tiny", "shapes", "mid_block", 7)
    rows = FeatureStore.rows

    def one_class(self, *args, **kwargs):
        table = rows(self, *args, **kwargs)
        return table.assign(label=0, label_name="red circle")

    monkeypatch.setattr(FeatureStore, "rows", one_class)
    with pytest.raises(TargetError, match=r"single class \['red circle'\]"):
        CachedMaps(store, "tiny", "shapes", "mid_block", 25)


def test_augment_is_seeded_and_keeps_shape():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert float(a.min()) >= float(x.min()) and float(a.max()) <= float(x.max())


def test_augment_does_only_the_listed_operations():
    x = torch.arange(64 * 3 * 4 * 6, dtype=torch.float32).view(64, 3, 4, 6)
    flipped = augment(x, torch.Generator().manual_seed(2), ["flip"])
    is_flip = [torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x)]
    assert all(f or torch.equal(a, o) for f, a, o in zip(is_flip, flipped, x)) and 16 < sum(is_flip) < 48
    cropped = augment(x, torch.Generator().manual_seed(2), ["crop"])
    # a crop keeps each row's values increasing left to right (no flip), and changes most items
    assert bool((cropped[..., 1:] >= cropped[..., :-1]).all()) and sum(not torch.equal(c, o) for c, o in zip(cropped, x)) > 32
    assert torch.equal(augment(x, torch.Generator().manual_seed(2), []), x)
    with pytest.raises(TargetError, match=r"unknown augmentation\(s\) \['rotate'\]"):
        augment(x, torch.Generator(), ["crop", "rotate"])


def test_one_pass_makes_every_heads_maps_and_trains_them_as_alone(store, model):
    """Every (timestep, layer) of the tiny extraction from one denoiser pass per batch: the maps are those of a
    source of that key alone (within one float16 step), and Diff-C heads trained together reach the accuracies of
    separate runs (on the CPU: the same numbers)."""
    from difflens.classify.diffc import DiffCSettings, train_diffc, train_diffc_heads
    from difflens.classify.sources import head_name

    keys = [(25, "mid_block"), (25, "up_ft1"), (500, "up_ft1")]
    kw = dict(target="label", seed=SETTINGS["seed"], augment=("crop",))
    heads = OnTheFlyMaps(store, model, "tiny", "shapes", "up_ft1", 25, keys=keys, **kw)
    assert heads.heads == tuple(head_name(t, layer) for t, layer in keys)
    alone = {head_name(t, layer): OnTheFlyMaps(store, model, "tiny", "shapes", layer, t, **kw) for t, layer in keys}
    for (maps, y), *singles in zip(heads.batches("train", 8, epoch=1, train=True),
                                   *[s.batches("train", 8, epoch=1, train=True) for s in alone.values()]):
        for (name, source), (single, ys) in zip(alone.items(), singles):
            assert maps[name].shape[1:] == (source.channels, *source.map_size) == heads.shapes[name]
            torch.testing.assert_close(maps[name], single, atol=2e-3, rtol=2e-3)
            assert torch.equal(y, ys)
    settings = DiffCSettings(epochs=2, lr=1e-3, width=8, batch_size=8, seed=1)
    together = train_diffc_heads(heads, heads.n_classes, settings, progress=False)
    for name, source in alone.items():
        single = train_diffc(source, source.n_classes, settings, progress=False)
        assert abs(together[name]["test_accuracy"] - single["test_accuracy"]) <= 1 / single["n_test"], name
        assert abs(together[name]["val_accuracy"] - single["val_accuracy"]) <= 1 / single["n_val"], name
