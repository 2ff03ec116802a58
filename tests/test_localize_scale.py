"""Localization's IoU step at 1/100 and 1/50 of COCO-IT's 6,973 word rows (70 and 140 rows; maps on SD's 64 x 64
latent grid, masks at 512 x 512, 50 thresholds): its peak traced memory stays at the bound of one chunk of rows
(difflens.info.memory) instead of growing with the rows as the (N, 50, 512, 512) arrays did."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from difflens.info import memory
from difflens.info.localize import BASE_MAPS, MAP_METHODS, PAPER_GRID, row_curves, threshold_grid

COCO_IT_ROWS = 6973
SIDE, RES, N_THRESHOLDS = 64, 512, 50


def box_masks(rows: int, start: int, stop: int) -> np.ndarray:
    """Seeded boxes (stop - start, RES, RES) as masks of rows start..stop of a run of ``rows`` rows."""
    out = np.zeros((stop - start, RES, RES), bool)
    for i in range(start, stop):
        y, x = np.random.default_rng([rows, i]).integers(0, RES - 64, 2)
        h, w = np.random.default_rng([rows, i, 1]).integers(32, RES - max(y, x), 2)
        out[i - start, y:y + h, x:x + w] = True
    return out


def traced_run(rows: int) -> tuple[int, dict, np.ndarray]:
    """(peak bytes traced while the IoU step runs, its curves, its mask shares) on ``rows`` synthetic rows."""
    rng = np.random.default_rng(rows)
    maps = {k: rng.gamma(0.5, size=(rows, SIDE, SIDE)).astype(np.float32) for k in BASE_MAPS}
    thresholds = threshold_grid(N_THRESHOLDS)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        curves, whole = row_curves(maps, lambda a, b: box_masks(rows, a, b), RES, thresholds)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return peak, curves, whole


def test_iou_peak_memory_does_not_grow_with_the_rows(one_thread):
    start = time.time()
    small, large = -(-COCO_IT_ROWS // 100), -(-COCO_IT_ROWS // 50)  # 70 and 140
    peak_small, curves, whole = traced_run(small)
    peak_large, _, _ = traced_run(large)
    # a row's curves (every method, on our grid and on the paper's) and mask share, float64
    curve_bytes = (len(MAP_METHODS) * (N_THRESHOLDS + len(PAPER_GRID)) + 1) * 8
    bound = memory.iou_step_bytes(RES, memory.CHUNK_ROWS)
    dense = large * N_THRESHOLDS * RES ** 2  # one of the (N, T, R, R) bool arrays of the dense version
    print(f"IoU step peak (traced): {peak_small / 1e6:.1f} MB at {small} rows, {peak_large / 1e6:.1f} MB at {large} "
          f"rows; chunk bound {bound / 1e6:.0f} MB; one dense (N, T, R, R) array at {large} rows "
          f"{dense / 1e9:.1f} GB; {time.time() - start:.1f} s")
    assert peak_large < 1.3 * peak_small + (large - small) * curve_bytes
    assert peak_large < bound + large * curve_bytes
    # the numbers are IoUs: in [0, 1], the box's share of the image for the whole-image map
    assert sorted(curves) == sorted([*MAP_METHODS, *(f"{m}:paper" for m in MAP_METHODS)])
    for m, c in curves.items():
        assert c.shape == (small, len(PAPER_GRID) if m.endswith(":paper") else N_THRESHOLDS), m
        assert 0 <= c.min() and c.max() <= 1, m
    np.testing.assert_array_equal(whole, box_masks(small, 0, small).reshape(small, -1).mean(1))
