"""Science of the classify stage on the shipped shapes model (a small run: 3,000 shapes-world images, 80/10/10).

What the shapes world makes checkable, with the numbers asserted:

* Diff-C reads the canonical object's colour and shape (``label``, 12 classes, chance 1/12) from the up_blocks.1
  maps at t = 25 with test accuracy >= 0.9 (width 64, 14 epochs, lr 3e-3, batch 32, no augmentation: a flip would
  swap the left object for the right);
* the linear probe on the pooled vectors beats chance (the majority class of the test split) by >= 0.1 at every
  layer at t = 25;
* the images drown in noise as t grows: the probe's best label accuracy over the layers falls from t = 25 to 500 to
  900.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SCIENCE_LAYERS as LAYERS, SCIENCE_TIMESTEPS as TIMESTEPS
from difflens.classify.diffc import DiffCSettings, train_diffc
from difflens.classify.sources import CachedMaps
from difflens.classify.tables import probe_rows

#: one xdist worker (make test) builds the shared science_store fixture once and runs every module using it
pytestmark = pytest.mark.xdist_group("science_store")


SETTINGS = DiffCSettings(epochs=14, lr=3e-3, batch_size=32, width=64, dropout=0.5, seed=0)


@pytest.fixture(scope="module")
def store(science_store):
    return science_store


@pytest.fixture(scope="module")
def probes(store):
    return probe_rows(store, "shapes", "shapes", [(t, layer) for t in TIMESTEPS for layer in LAYERS], ["label"],
                      progress=False)


def test_diffc_reads_the_label_at_t25(store):
    source = CachedMaps(store, "shapes", "shapes", "up_blocks.1", 25, augment=[])
    result = train_diffc(source, source.n_classes, SETTINGS, device="cpu", progress=False)
    print(f"Diff-C up_blocks.1 t25 label: val {result['val_accuracy']:.3f} (epoch {result['best_epoch']}), "
          f"test {result['test_accuracy']:.3f}")
    assert source.n_classes == 12 and result["test_accuracy"] >= 0.9


def test_probe_beats_chance_on_every_layer(store, probes):
    test_labels = store.rows("shapes", "shapes", "mid_block", 25, split="test")["label"].to_numpy()
    chance = np.bincount(test_labels).max() / len(test_labels)
    at25 = probes[probes["timestep"] == 25].set_index("layer")["test_accuracy"]
    print(f"probe label test accuracy at t25 (chance {chance:.3f}):\n{at25.round(3).to_string()}")
    assert sorted(at25.index) == sorted(LAYERS) and (at25 >= chance + 0.1).all()


def test_probe_accuracy_falls_as_noise_grows(probes):
    best = probes.groupby("timestep")["test_accuracy"].max()
    print(f"best probe label test accuracy by timestep:\n{best.round(3).to_string()}")
    assert best[25] > best[500] > best[900]
