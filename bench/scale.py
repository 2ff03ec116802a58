"""Benchmark: the analysis steps that hold whole tables, at the papers' sizes, beside what their rules ask for.

Each step runs on synthetic inputs of the paper's shape (the generators of the scale tests, tests/test_*scale*.py)
at 1/50, 1/25 and 1/10 of the paper's size; peak traced memory (tracemalloc: numpy arrays and Python objects) and
seconds are measured at each, and extrapolated to the full size by a straight line through the three (``--full``
measures the full size instead, where this machine's memory allows). Beside them, the memory its rule asks for
(difflens.resources, difflens.info.memory, difflens.sae.memory):

* localization IoU: COCO-IT, 6,973 word rows, maps on SD's 64 x 64 latent grid, masks at 512 x 512, 50 thresholds;
* SAE analysis: Flowers-102 test split, 6,149 images x 81,920 latents (64 x 1280), 102 classes;
* ARO aggregation: VG-Relation + VG-Attribution + COCO / Flickr30k-Order, 82,695 items;
* Diff-C cached loading: Oxford-IIIT Pet trainval, 3,680 up_ft1 maps (1280 x 32 x 32, float16);
* browser latent pages: the SAE above, 2,000 latents listed.

    python bench/scale.py            # three sizes, extrapolated (a few minutes on 2 CPU cores)
    python bench/scale.py --full     # measured at full size (needs ~12 GB free)
    python bench/scale.py --smoke    # 1/500, 1/250, 1/100 of each: seconds
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from difflens import resources  # noqa: E402
from difflens.classify import sources  # noqa: E402
from difflens.classify.sources import CachedMaps  # noqa: E402
from difflens.info import memory as info_memory  # noqa: E402
from difflens.info.aro import aggregate, item_outcomes  # noqa: E402
from difflens.info.localize import BASE_MAPS, row_curves, threshold_grid  # noqa: E402
from difflens.report.browser import latent_pages  # noqa: E402
from difflens.sae import memory as sae_memory  # noqa: E402
from test_localize_scale import COCO_IT_ROWS, N_THRESHOLDS, RES, SIDE, box_masks  # noqa: E402
from test_resources import _reader  # noqa: E402
from test_sae_scale import CLASSES, IMAGES, LATENTS, analysis_peak, synthetic  # noqa: E402
from test_scale import ARO_ITEMS, LISTED, aro_scores, sparse_scores, traced_peak  # noqa: E402

MB = 1e6
PETS_TRAINVAL, UP_FT1 = 3680, (1280, 32, 32)
SD21_WEIGHTS_MB = 1.29e9 * 4 / MB  # UNet, text encoder and VAE of SD 2.1-base in float32


def localization(fraction: int) -> tuple[int, int]:
    """(peak bytes, rows) of the IoU step on 1 / fraction of COCO-IT."""
    rows = max(2, COCO_IT_ROWS // fraction)
    rng = np.random.default_rng(rows)
    maps = {k: rng.gamma(0.5, size=(rows, SIDE, SIDE)).astype(np.float32) for k in BASE_MAPS}
    _, peak = traced_peak(row_curves, maps, lambda a, b: box_masks(rows, a, b), RES, threshold_grid(N_THRESHOLDS))
    return peak, rows


def sae_analysis(fraction: int) -> tuple[int, int]:
    scores, labels, names, indicators = synthetic(max(2, round(IMAGES / fraction)))
    extra, _ = analysis_peak(scores, labels, names, indicators)
    return scores.nbytes + extra, len(scores)


def aro(fraction: int) -> tuple[int, int]:
    scores = aro_scores(fraction)
    _, peak = traced_peak(lambda s: aggregate(item_outcomes(s), min_group=25), scores)
    return peak, scores["item"].nunique()


def diffc_cached(fraction: int) -> tuple[int, int]:
    sources.READ_ROWS = 16
    fake = _reader(max(2, PETS_TRAINVAL // fraction), UP_FT1)
    _, peak = traced_peak(CachedMaps._read_split, fake, "train")
    return peak, len(fake.rows["train"])


def browser(fraction: int) -> tuple[int, int]:
    scores = sparse_scores(max(2, IMAGES // fraction))
    table = pd.DataFrame({"latent": np.arange(LISTED), "frequency": (scores[:, :LISTED] > 0).mean(0),
                          "mean_activation": scores[:, :LISTED].mean(0), "purity": 0.5, "sigma": 1.0,
                          "best_attribute": "label=a", "auroc": 0.6})
    _, peak = traced_peak(latent_pages, scores, table, top=10, quantiles=(0.25, 0.5, 0.75), bins=20,
                          max_latents=LISTED)
    return peak + scores.nbytes, len(scores)


def requests() -> dict[str, tuple[str, float]]:
    """What each step's rule asks for at the paper's size, MB, and where that figure comes from."""
    pets = {"n_valid": PETS_TRAINVAL, "map_shape": list(UP_FT1), "maps": True}
    shard_rows = COCO_IT_ROWS // 32
    shard = (2 * shard_rows * info_memory.row_bytes(RES, N_THRESHOLDS) + info_memory.iou_step_bytes(RES)) / MB
    return {
        "localization IoU": ("localize_words, 1 of 32 shards", resources.request_mb(SD21_WEIGHTS_MB + shard)),
        "SAE analysis": ("analyse_sae", resources.request_mb(sae_memory.analysis_bytes(IMAGES, 1, 1280, LATENTS,
                                                                                       CLASSES) / MB)),
        "ARO aggregation": ("collect_aro (default-resources)", 4000),
        "Diff-C cached loading": ("train_diffc, cache_limit_gb 16",
                                  resources.request_mb(resources.cached_maps_mb(pets, 16))),
        "browser latent pages": ("feature_browser", 8000),
    }


STEPS = {"localization IoU": (localization, COCO_IT_ROWS, "rows"), "SAE analysis": (sae_analysis, IMAGES, "images"),
         "ARO aggregation": (aro, sum(n for n, _ in ARO_ITEMS.values()), "items"),
         "Diff-C cached loading": (diffc_cached, PETS_TRAINVAL, "maps"),
         "browser latent pages": (browser, IMAGES, "images")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="measure at full size instead of extrapolating")
    size.add_argument("--smoke", action="store_true", help="1/500, 1/250, 1/100 of each (seconds)")
    ap.add_argument("--steps", nargs="*", choices=list(STEPS), default=list(STEPS))
    args = ap.parse_args(argv)
    fractions = (1,) if args.full else (500, 250, 100) if args.smoke else (50, 25, 10)
    asked = requests()
    print(f"difflens scale benchmark: peak traced memory and seconds at 1/{', 1/'.join(map(str, fractions))} of "
          f"the papers' sizes{'' if args.full else ', extrapolated to full size by a straight line'}")
    print(f"{'step':24} {'size':>16} {'measured at':>22} {'peak MB':>9} {'s':>7} {'full MB':>9} {'full s':>8} "
          f"{'rule asks MB':>13}  rule")
    for name in args.steps:
        fn, full, unit = STEPS[name]
        points = []
        for fraction in fractions:
            start = time.perf_counter()
            peak, n = fn(fraction)
            points.append((n, peak / MB, time.perf_counter() - start))
        n, peak, secs = np.array(points).T
        if len(points) > 1:
            peak_full = np.polyval(np.polyfit(n, peak, 1), full)
            secs_full = np.polyval(np.polyfit(n, secs, 1), full)
        else:
            peak_full, secs_full = peak[0], secs[0]
        rule, mb = asked[name]
        measured = ", ".join(str(int(v)) for v in n)
        print(f"{name:24} {full:>10,} {unit:5} {measured:>22} {peak[-1]:9.1f} {secs[-1]:7.2f} {peak_full:9.1f} "
              f"{secs_full:8.1f} {mb:13,.0f}  {rule}")
    tracemalloc.stop()


if __name__ == "__main__":
    main()
