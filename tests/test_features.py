"""The feature reader (difflens.extract.store) on the session's reference extraction (see tests/test_extraction.py)."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from difflens.data.common import Dataset
from difflens.extract.layout import ShardPlan, activation_path
from difflens.extract.store import FeatureError, FeatureStore
from test_extraction import LAYERS, N_IMAGES, TIMESTEPS, extracted, tiny_world


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return extracted(tmp_path_factory)


@pytest.fixture(scope="module")
def store(results):
    return FeatureStore(results)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return Dataset.load(tiny_world(tmp_path_factory)["data"]).samples


def test_shard_plan():
    plan = ShardPlan(40, 16)
    assert plan.n_shards == 3 and list(plan.rows(2)) == list(range(32, 40))
    assert ShardPlan(0, 16).n_shards == 1 and ShardPlan(32, 16).n_shards == 2
    with pytest.raises(ValueError, match="outside 0..2"):
        plan.rows(3)


def test_discovery(store):
    assert store.models() == ["tiny"] and store.datasets("tiny") == ["shapes"]
    assert store.timesteps("tiny", "shapes") == TIMESTEPS
    assert store.layers("tiny", "shapes", 25) == sorted(LAYERS)
    attrs = store.attrs("tiny", "shapes", "mid_block", 500)
    assert attrs["timestep"] == 500 and attrs["layer"] == "mid_block" and attrs["versions"]["h5py"]


def test_pooled_rows_carry_ids_splits_labels(store, samples):
    f = store.pooled("tiny", "shapes", "mid_block", 25)
    assert f.x.shape == (N_IMAGES, 32) and f.x.dtype == np.float32
    assert list(f.sample_id) == list(samples["sample_id"])
    assert list(f.split) == list(samples["split"])
    np.testing.assert_array_equal(f.label, samples["label"])
    train = store.pooled("tiny", "shapes", "mid_block", 25, split="train")
    assert set(train.split) == {"train"} and len(train) == (samples["split"] == "train").sum()
    np.testing.assert_array_equal(train.x, f.x[samples["split"].to_numpy() == "train"])
    t = store.pooled("tiny", "shapes", "mid_block", 25, split=["val", "test"], as_torch=True)
    assert torch.is_tensor(t.x) and torch.is_tensor(t.label) and len(t) == N_IMAGES - len(train)


def test_iter_pooled_matches_load(store):
    whole = store.pooled("tiny", "shapes", "up_ft1", 500)
    parts = list(store.iter_pooled("tiny", "shapes", "up_ft1", 500, batch_size=5))
    assert max(len(p) for p in parts) <= 5
    np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), whole.x)


def test_layer_by_module_path_or_alias(store):
    a = store.pooled("tiny", "shapes", "up_ft1", 25)
    b = store.pooled("tiny", "shapes", "up_blocks.1", 25)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(FeatureError, match="layers at t25"):
        store.pooled("tiny", "shapes", "up_blocks.2", 25)
    with pytest.raises(FeatureError, match=r"timesteps there: \[25, 500\]"):
        store.pooled("tiny", "shapes", "mid_block", 999)


def test_maps_stream_in_bounded_batches(store):
    pooled = store.pooled("tiny", "shapes", "down_blocks.1", 500)
    batches = list(store.iter_maps("tiny", "shapes", "down_blocks.1", 500, batch_size=6))
    assert all(len(b) <= 6 and b.x.dtype == np.float32 for b in batches)
    maps = np.concatenate([b.x for b in batches])
    assert maps.shape == (N_IMAGES, 32, 4, 4)
    # the pooled vector is the spatial mean of the (float16-stored) map
    np.testing.assert_allclose(maps.mean((-2, -1)), pooled.x, atol=2e-3)
    t = next(store.iter_maps("tiny", "shapes", "down_blocks.1", 500, batch_size=6, as_torch=True))
    assert torch.is_tensor(t.x) and t.x.shape == (6, 32, 4, 4)


def test_maps_load_whole_only_under_the_memory_limit(store):
    whole = store.maps("tiny", "shapes", "mid_block", 25, split="test")
    assert whole.x.shape[1:] == (32, 4, 4) and set(whole.split) == {"test"}
    with pytest.raises(FeatureError, match="iter_maps"):
        store.maps("tiny", "shapes", "mid_block", 25, max_bytes=1000)


def test_maps_dataset_random_access(store):
    ds = store.maps_dataset("tiny", "shapes", "up_ft1", 25, split="train")
    first = next(store.iter_maps("tiny", "shapes", "up_ft1", 25, split="train", batch_size=4))
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (32, 16, 16)
    torch.testing.assert_close(x, torch.from_numpy(first.x[3]))
    assert y == first.label[3] and ds.sample_ids[3] == first.sample_id[3]
    clone = pickle.loads(pickle.dumps(ds))  # as DataLoader workers receive it
    torch.testing.assert_close(clone[len(clone) - 1][0], ds[len(ds) - 1][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 32, 16, 16) and yb.dtype == torch.int64
    ds.close()


def test_latents(store, samples):
    lat = list(store.iter_latents("tiny", "shapes", batch_size=16, as_torch=True))
    assert sum(len(b) for b in lat) == N_IMAGES and lat[0].x.shape[1:] == (12, 16, 16)
    assert list(np.concatenate([b.sample_id for b in lat])) == list(samples["sample_id"])
    x, _ = store.latents_dataset("tiny", "shapes")[5]
    torch.testing.assert_close(x, lat[0].x[5])
    assert store.skipped("tiny", "shapes").empty


def test_missing_shard_is_an_error_not_a_silent_gap(tmp_path, results):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    activation_path(copy, "tiny", "shapes", 25, "mid_block", 1).unlink()
    with pytest.raises(FeatureError, match=r"shard\(s\) \[1\] of 3 missing"):
        FeatureStore(copy).pooled("tiny", "shapes", "mid_block", 25)
    with pytest.raises(FeatureError, match="no activations"):
        FeatureStore(tmp_path / "nowhere").pooled("tiny", "shapes", "mid_block", 25)
