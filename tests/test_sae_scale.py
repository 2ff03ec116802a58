"""Memory of the SAE analysis at scale, on synthetic scores: the paper's largest analysis is the Flowers-102 test
split, 6,149 images x 81,920 latents (64 x 1280) against 102 classes, whose scores alone are 2 GB; ranking every
latent at once held 13.5 times them (25-30 GB).

Here the images are scaled down to 1/50 and 1/25 of the split (123 and 246 images) with every latent kept, so the
per-latent tables (the AUROC table, the latent table) are paper-sized, and 5% of the entries fire (every latent
lives, the worst case for the chunks). tracemalloc (numpy's arrays and Python objects: the analysis holds no torch
memory) measures the peak of ``live_latents`` + ``attribute_auroc`` + ``latent_table`` + ``sigma_label``, as
``analyse_sae`` runs them, above the scores. With the working-memory budget set to 16 MB, the peak stays within the
budget plus the per-latent tables that ``sae.memory`` counts, at both sizes, so the whole peak grows with the scores
alone; the same analysis ranking all latents in one chunk breaks that bound.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from difflens.sae import memory
from difflens.sae.analysis import attribute_auroc, indicator_columns, latent_table, live_latents, sigma_label

IMAGES, LATENTS, CLASSES = 6149, 81920, 102  # Flowers-102 test split, 64 x 1280 latents
BUDGET = 16 * 2 ** 20


def synthetic(images: int, latents: int = LATENTS, seed: int = 0):
    """(scores (images, latents) float32 with 5% of the entries in (0.95, 1), class ids (every class, so the AUROC
    table is as wide at both sizes), indicator names and columns)."""
    rng = np.random.default_rng(seed)
    scores = rng.random((images, latents), dtype=np.float32)
    scores[scores < 0.95] = 0
    labels = rng.permutation(np.arange(images) % CLASSES)
    names, indicators = indicator_columns(pd.DataFrame({"label": labels}), ["label"])
    return scores, labels, names, indicators


def analysis_peak(scores, labels, names, indicators, chunk=None) -> tuple[int, int]:
    """(tracemalloc peak above what was allocated before, live latents) of the analysis of ``analyse_sae``."""
    tracemalloc.start()
    try:
        live = live_latents(scores)
        auc = attribute_auroc(scores, indicators, live, chunk=chunk)
        table = latent_table(scores, labels, names, auc)
        sigma_label(scores, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(table) == len(live)
    return peak, len(live)


def tables_bytes(latents: int, indicators: int) -> int:
    """What ``sae.memory.analysis_bytes`` allows per latent: the AUROC row and the latent table's row."""
    return latents * (indicators * memory.FLOAT64 + memory.TABLE_BYTES_PER_LATENT)


def test_analysis_peak_is_the_scores_plus_a_chunk(monkeypatch):
    monkeypatch.setattr(memory, "CHUNK_BYTES", BUDGET)
    totals = {}
    for fraction in (50, 25):
        scores, labels, names, indicators = synthetic(round(IMAGES / fraction))
        extra, live = analysis_peak(scores, labels, names, indicators)
        totals[fraction] = scores.nbytes + extra
        print(f"1/{fraction}: {len(scores)} images x {LATENTS} latents ({live} live, {len(names)} indicators): scores "
              f"{scores.nbytes / 2 ** 20:.0f} MiB, analysis peak above them {extra / 2 ** 20:.0f} MiB (bound "
              f"{(BUDGET + tables_bytes(LATENTS, len(names))) / 2 ** 20:.0f} MiB)")
        assert live > 0.99 * LATENTS
        assert extra <= BUDGET + tables_bytes(LATENTS, len(names))
    growth = 123 * LATENTS * 4  # the scores of the images added from 1/50 to 1/25
    assert totals[25] - totals[50] <= 1.1 * growth  # ranking every latent at once would add ~9 x this growth


def test_ranking_every_latent_at_once_breaks_the_bound(monkeypatch):
    """The check above can fail: one chunk of all latents (the analysis before the chunks) holds ~10 x the
    scores."""
    monkeypatch.setattr(memory, "CHUNK_BYTES", BUDGET)
    scores, labels, names, indicators = synthetic(round(IMAGES / 50), latents=LATENTS // 5)
    chunked, live = analysis_peak(scores, labels, names, indicators)
    whole, _ = analysis_peak(scores, labels, names, indicators, chunk=LATENTS)
    print(f"{scores.shape}: peak above the scores {chunked / 2 ** 20:.0f} MiB in chunks, {whole / 2 ** 20:.0f} MiB "
          f"at once")
    assert chunked <= BUDGET + tables_bytes(live, len(names)) < whole
    assert whole > 8 * scores.nbytes


@pytest.fixture(autouse=True)
def _no_leftover_trace():
    yield
    assert not tracemalloc.is_tracing()
