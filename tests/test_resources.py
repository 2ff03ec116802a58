"""Memory requests (difflens.resources) and the bounded loading they assume: parameters read from safetensors headers,
formulas that grow with what a job holds, Diff-C's cached maps read into memory with a peak of the maps plus one
slice (at 1/50 and 1/25 of an Oxford Pets up_ft1 split)."""
from __future__ import annotations

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from difflens import resources
from difflens.classify import sources
from difflens.classify.sources import CachedMaps, TargetError


def test_parameters_come_from_the_headers(tmp_path):
    (tmp_path / "unet").mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)}, tmp_path / "unet" / "m.safetensors")
    save_file({"c": torch.zeros(2, 2, 2)}, tmp_path / "vae.safetensors")
    assert resources.parameter_count(tmp_path) == 12 + 5 + 8
    assert resources.weights_mb(tmp_path, "bfloat16") == pytest.approx(25 * 2 / 1e6)
    assert resources.parameter_count(tmp_path / "absent") == 0


def test_requests_grow_with_what_the_job_holds(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"sample_size": 64}))
    save_file({"w": torch.zeros(1000, 1000)}, tmp_path / "unet" / "w.safetensors")
    assert resources.native_resolution(tmp_path) == 512 and resources.native_resolution(tmp_path / "x", 77) == 77
    small = resources.extraction_mb(tmp_path, "float32", 512, 1, 0)
    assert resources.extraction_mb(tmp_path, "float32", 512, 8, 0) > small
    assert resources.extraction_mb(tmp_path, "float32", 512, 1, 10 ** 8) >= small + 400 * resources.HEADROOM - 100
    assert resources.extraction_mb(tmp_path, "float32", 512, 1, 0, attempt=2) == pytest.approx(2 * small, abs=100)
    assert resources.model_job_mb(tmp_path, "bfloat16", 512, 1) < resources.model_job_mb(tmp_path, "float32", 512, 1)
    assert resources.request_mb(0) >= resources.BASE_MB and resources.request_mb(0) % 100 == 0


def test_pooled_and_cached_map_terms_read_the_index(tmp_path):
    entry = {"timestep": 25, "layer": "up_blocks.1", "channels": 1280, "map_shape": [1280, 32, 32], "maps": True,
             "n_rows": 3680, "n_valid": 3680}
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"entries": [entry, {**entry, "layer": "mid_block", "channels": 4, "n_rows": 9}]}))
    assert resources.index_entries(index, "up_blocks.1", 25) == [entry] and not resources.index_entries(index, "x")
    assert resources.pooled_table_mb(index) == resources.request_mb(3680 * 1280 * 8 * 4 / 1e6)
    size = 3680 * 1280 * 32 * 32 * 2
    assert resources.cached_maps_mb(entry, 100) == pytest.approx((size + 256 * 1280 * 1024 * 2) / 1e6)
    assert resources.cached_maps_mb(entry, size * 1.2 / 2 ** 30) == 0  # over the limit: read row by row
    assert resources.cached_maps_mb({**entry, "maps": False}, 100) == 0


class _Maps:
    """A stand-in for the store's map reader: synthetic float16 maps of ``ids``, ``rows`` at a time, in file
    order."""

    def __init__(self, ids, shape):
        self.ids, self.shape = ids, shape

    def iter_maps(self, model, dataset, layer, timestep, *, split, batch_size, dtype):
        for a in range(0, len(self.ids), batch_size):
            ids = self.ids[a:a + batch_size]
            x = np.empty((len(ids), *self.shape), dtype)
            x[:] = np.asarray([int(s[1:]) for s in ids], dtype)[:, None, None, None]
            yield SimpleNamespace(sample_id=np.asarray(ids), x=x)


def _reader(n_rows: int, shape, wanted=None):
    ids = [f"s{i}" for i in range(n_rows)]
    rows = pd.DataFrame({"sample_id": list(reversed(wanted if wanted is not None else ids))})
    return SimpleNamespace(store=_Maps(ids, shape), rows={"train": rows}, channels=shape[0], map_size=shape[1:],
                           model_name="m", dataset="d", layer="l", timestep=25)


def test_cached_maps_land_in_row_order_and_a_missing_row_is_an_error():
    fake = _reader(10, (2, 3, 3), wanted=["s3", "s7", "s1"])
    x = CachedMaps._read_split(fake, "train")
    assert x.dtype == torch.float16 and x[:, 0, 0, 0].tolist() == [1, 7, 3]
    fake.rows["train"] = pd.DataFrame({"sample_id": ["s3", "s99"]})
    with pytest.raises(TargetError, match="1 train rows have no saved map"):
        CachedMaps._read_split(fake, "train")


@pytest.mark.parametrize("fraction", [50, 25])
def test_cached_maps_peak_is_the_split_plus_one_slice(monkeypatch, fraction):
    """Oxford Pets' 3,680 trainval images at up_ft1 (1280 x 32 x 32, float16: 9.6 GB) / 50 and / 25; the reader's
    slice is 16 rows here."""
    monkeypatch.setattr(sources, "READ_ROWS", 16)
    shape = (1280, 32, 32)
    fake = _reader(3680 // fraction, shape)
    split = len(fake.rows["train"]) * int(np.prod(shape)) * 2
    tracemalloc.start()
    try:
        x = CachedMaps._read_split(fake, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (3680 // fraction, *shape)
    assert peak <= split + 2 * 16 * int(np.prod(shape)) * 2 + 2 ** 20, (peak / split)
