"""Analysis steps that hold whole tables, at 1/50 and 1/25 of the papers' sizes on synthetic inputs: peak traced
memory (tracemalloc) grows with the table, not faster, and stays under a per-row bound that puts the full size
inside the rule's request. bench/scale.py runs the same steps at full size.

Sizes: ARO's four sets together, 82,695 items (VG-Relation 23,937, VG-Attribution 28,748, COCO-Order 25,010,
Flickr30k-Order 5,000; 2 candidates for VG, 5 for the order sets); the browser's latent pages of an SAE of 81,920
latents read on the Flowers-102 test split (6,149 images), 2,000 latents listed.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from difflens.info.aro import SCORES, aggregate, item_outcomes
from difflens.report.browser import latent_pages

ARO_ITEMS = {"relation": (23_937, 2), "attribute": (28_748, 2), "order": (30_010, 5)}
FLOWERS_TEST, LATENTS, LISTED = 6_149, 81_920, 2_000


def traced_peak(fn, *args, **kwargs) -> tuple[object, int]:
    """(result, peak bytes traced while ``fn`` ran)."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def aro_scores(fraction: int, seed: int = 0) -> pd.DataFrame:
    """Per-candidate scores of ``1 / fraction`` of ARO's items, as ``score_shard`` writes them."""
    rng = np.random.default_rng(seed)
    parts, item = [], 0
    for kind, (n, candidates) in ARO_ITEMS.items():
        n //= fraction
        items = np.repeat(np.arange(item, item + n), candidates)
        item += n
        parts.append(pd.DataFrame({
            "sample_id": [f"s{i}" for i in items], "item": items, "kind": kind,
            "group": rng.choice([f"g{g}" for g in range(40)], len(items)),
            "candidate": np.tile(np.arange(candidates), n), "caption": "a caption",
            **{f"{name}_nats": rng.normal(size=len(items)).round(3) for name in SCORES}}))
    return pd.concat(parts, ignore_index=True)


def outcomes_by_hand(scores: pd.DataFrame) -> pd.DataFrame:
    """The per-item loop ``item_outcomes`` replaces: the reference it must equal."""
    out = []
    for item, g in scores.groupby("item", sort=True):
        g = g.sort_values("candidate")
        true, neg = g.iloc[0], g.iloc[1:]
        for name, higher in SCORES.items():
            col = f"{name}_nats"
            best = neg[col].max() if higher else neg[col].min()
            margin = (true[col] - best) if higher else (best - true[col])
            out.append({"item": item, "sample_id": true["sample_id"], "kind": true["kind"], "group": true["group"],
                        "score": name, "n_candidates": len(g), "margin_nats": float(margin),
                        "tie": bool(margin == 0), "correct": bool(margin > 0)})  # a tie is wrong (the authors')
    return pd.DataFrame(out)


def test_item_outcomes_equal_the_loop_with_ties_and_lone_candidates():
    scores = aro_scores(2000, seed=3)
    scores.loc[scores.index[::7], "i_o_nats"] = 0.0  # ties between the true caption and a negative
    lone = scores[scores["item"] == scores["item"].max()].head(1)  # an item without negatives: never right
    scores = pd.concat([scores[scores["item"] != scores["item"].max()], lone]).sample(frac=1, random_state=0)
    pd.testing.assert_frame_equal(item_outcomes(scores), outcomes_by_hand(scores), check_dtype=False)


def test_aro_aggregation_memory_is_linear_in_the_items():
    peaks, rows = {}, {}
    for fraction in (50, 25):
        scores = aro_scores(fraction)
        table, peaks[fraction] = traced_peak(lambda s: aggregate(item_outcomes(s), min_group=25), scores)
        rows[fraction] = len(scores)
        assert set(table["metric"]) == {"accuracy", "group", "macro"}
    per_row = peaks[25] / rows[25]
    assert peaks[25] < 2.3 * peaks[50], peaks  # twice the rows: about twice the memory
    assert per_row < 600, per_row  # bytes per candidate row (measured ~200): ~150 MB for ARO's 255k rows


def sparse_scores(images: int, seed: int = 0) -> np.ndarray:
    """(images, 81,920) per-image activations, 2% of latents firing per image."""
    rng = np.random.default_rng(seed)
    scores = np.zeros((images, LATENTS), np.float32)
    hits = rng.random((images, LATENTS), dtype=np.float32) < 0.02
    scores[hits] = rng.random(int(hits.sum()), dtype=np.float32)
    return scores


def test_browser_latent_pages_hold_no_more_than_the_scores():
    peaks, sizes = {}, {}
    for fraction in (50, 25):
        scores = sparse_scores(FLOWERS_TEST // fraction)
        table = pd.DataFrame({"latent": np.arange(LISTED), "frequency": (scores[:, :LISTED] > 0).mean(0),
                              "mean_activation": scores[:, :LISTED].mean(0), "purity": 0.5, "sigma": 1.0,
                              "best_attribute": "label=a", "auroc": 0.6})
        pages, peaks[fraction] = traced_peak(latent_pages, scores, table, top=10, quantiles=(0.25, 0.5, 0.75),
                                             bins=20, max_latents=LISTED)
        sizes[fraction] = scores.nbytes
        assert len(pages) == LISTED and all(len(p["top"]) <= 10 for p in pages)
    # the scores themselves are the caller's; the pages add a few kB per listed latent (measured ~3.1 kB) and one
    # column at a time, so twice the images add next to nothing
    assert peaks[25] < 1.2 * peaks[50], peaks
    for fraction in (50, 25):
        assert peaks[fraction] < 0.02 * sizes[fraction] + LISTED * 4_000, (fraction, peaks[fraction])
