"""sigma_label's two definitions (``sae.sigma``) and the null of random image sets (difflens.sae.analysis).

``public_code`` is held against a line-by-line transcription of the Revelio code's arithmetic (its
``save_feature.py``: ReLU of the dense pre-activations, top 10 by ``torch.topk`` merged with a zero buffer, mean over
the images a latent fires on, ``torch.std`` with ddof 1, running means at 100, 200, ...). The null is checked where
the right answer is known: latents that know nothing of the labels are "better than random" at the 5% level about 5%
of the time, and a weak signal spread over many latents is found by the mean's null while the single-set band that
the report used before misses it.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.sae.analysis import (NULL_REPLICATES, binomial_upper_tail, dense_image_scores, random_baseline,
                                   random_null, random_sets, read_sae, read_summary, sigma_label, sigma_public_code)
from difflens.sae.model import KSAE, SAEConfig, SAEError


def revelio_code_sigma(pre: torch.Tensor, labels: torch.Tensor, top: int = 10) -> tuple[torch.Tensor, dict]:
    """The Revelio code's numbers from dense pre-activations ``pre`` (images, d_sae), transcribed from its
    ``save_features``: (sigma of every latent in its order, {count: running mean})."""
    n_images, d_sae = pre.shape
    acts = torch.nn.functional.relu(pre).transpose(0, 1)  # [feature_idx, batch]
    mean_acts = acts.sum(dim=1)
    sparsity = (acts > 0).sum(dim=1).float()
    values, indices = torch.topk(acts, k=top, dim=1)
    zeros = torch.zeros(d_sae, top)
    total_values, total_indices = torch.cat([zeros, values], 1), torch.cat([zeros, indices.float()], 1)
    _, which = torch.topk(total_values, k=top, dim=1)
    max_indices = torch.gather(total_indices, 1, which)
    mean_acts /= (sparsity + 1e-8)
    sparsity /= n_images
    label_of_top = labels[max_indices.long()]
    num_activating = sparsity * n_images
    _, neurons = torch.topk(mean_acts * (num_activating > 10), k=d_sae)
    std_per_row = torch.std(label_of_top[neurons][:, :10].float(), dim=1)
    return std_per_row, {count: std_per_row[:count].mean().item() for count in range(100, d_sae, 100)}


def test_public_code_matches_the_revelio_code_arithmetic():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(400, 350, generator=g) - 1.0  # each latent fires on ~16% of the images
    pre[:, 310:] -= 3.0  # 40 latents fire on (almost) none: ineligible, ranked last by both
    labels = torch.randint(0, 37, (400,), generator=g)
    eligible = int(((pre > 0).sum(0) > 10).sum())
    assert 300 <= eligible <= 310
    ref_sigma, ref_running = revelio_code_sigma(pre, labels)
    ours = sigma_public_code(torch.relu(pre), labels.numpy())
    assert ours["n_eligible"] == eligible and ours["ddof"] == 1
    np.testing.assert_allclose(ours["sigma"], ref_sigma[:eligible].numpy(), rtol=1e-5)
    assert set(ours["cumulative"]) == {100, 200, 300}
    for count, value in ours["cumulative"].items():
        assert value == pytest.approx(ref_running[count], rel=1e-5)
    # and the sparse definition is a different number on the same matrix (ddof 0, another ranking)
    sparse = sigma_label(torch.relu(pre), labels.numpy())
    assert sparse["ddof"] == 0 and abs(sparse["sigma_label"] - ours["sigma_label"]) > 1e-3


def test_dense_scores_are_the_relu_pre_activations_maxed_over_positions():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=6, n_latents=20, k=2))
    x = torch.randn(12, 6)
    pooled = dense_image_scores(sae, x, positions=1, batch_size=5)
    assert torch.allclose(pooled, sae.pre_activations(x))
    spatial = dense_image_scores(sae, x, positions=4, batch_size=5)  # 5 vectors: one whole image per batch
    assert torch.allclose(spatial, sae.pre_activations(x).view(3, 4, 20).amax(1))
    with pytest.raises(SAEError, match="whole number of images"):
        dense_image_scores(sae, x, positions=5)


def test_read_sae_headlines_the_chosen_definition_and_names_a_bad_one():
    torch.manual_seed(1)
    sae = KSAE(SAEConfig(d=8, n_latents=64, k=4))
    x = torch.randn(300, 8)
    rows = pd.DataFrame({"label": np.arange(300) % 5, "colour": np.arange(300) % 3})
    reads = {d: read_sae(sae, x, rows, 1, ["colour"], sigma=d) for d in ("sparse", "public_code")}
    for d, read in reads.items():
        s = read_summary(read)
        assert s["sigma_definition"] == d and s["sigma_label"] == s[f"sigma_label_{d}"]
        assert s["null_purity_m"] == s["sigma_eligible"] == s[f"sigma_eligible_{d}"]
        assert 0 < s["null_purity_p_value"] <= 1 and s["better_than_random"] == (s["null_purity_p_value"] < 0.05)
    # both definitions are computed whichever is headlined
    assert read_summary(reads["sparse"])["sigma_label_public_code"] == read_summary(reads["public_code"])["sigma_label"]
    with pytest.raises(SAEError, match="sae.sigma: 'dense'"):
        read_sae(sae, x, rows, 1, ["colour"], sigma="dense")


def test_random_sets_draw_without_replacement():
    labels = np.arange(12)  # every image its own label: a repeated image would lower purity's denominator
    sigma, purity = random_sets(labels, 500, top=10, seed=3)
    assert np.all(purity == 0.1)
    sigma, purity = random_sets(labels, 50, top=12, seed=3)  # every set is all the images
    assert np.allclose(sigma, np.arange(12).std())


def test_binomial_tail_matches_the_sum_of_the_pmf():
    for k, n, p in [(0, 10, 0.3), (3, 10, 0.3), (10, 10, 0.3), (7, 40, 0.05), (1, 5, 0.0)]:
        exact = sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert binomial_upper_tail(k, n, p) == pytest.approx(exact, abs=1e-12)


def null_of(scores, labels, seed):
    sig = sigma_label(scores, labels)
    return sig, random_null(sig, labels, seed=seed, replicates=NULL_REPLICATES)


def test_latents_that_know_nothing_are_rarely_better_than_random():
    """Scores independent of the labels, 40 seeds: the mean's null calls purity better at the 5% level in at most 5 of
    40 (expected 2; P(> 5) < 0.02 under a uniform p-value), and the share of latents above the single-set 95th
    percentile stays near its chance share."""
    better, excess = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, 600)
        scores = torch.from_numpy(rng.random((600, 80)).astype(np.float32))
        _, null = null_of(scores, labels, seed)
        better += null["purity"]["better"]
        excess.append(null["purity"]["beyond_share"] - null["purity"]["beyond_chance"])
    assert better <= 5
    assert abs(np.mean(excess)) < 0.02


def test_a_weak_signal_over_many_latents_beats_the_mean_null_but_not_the_single_set_band():
    """200 latents each a little drawn to one label (its images score 0.4 log-units higher): the mean
    purity is inside the single-set 5th-95th band (the old yardstick: "no better than random") but far beyond the
    null of the mean."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    scores = np.exp(rng.normal(size=(2000, 200)) + 0.4 * (labels[:, None] == (np.arange(200) % 10)[None, :]))
    sig, null = null_of(torch.from_numpy(scores.astype(np.float32)), labels, 0)
    band = random_baseline(labels, draws=2000, seed=0)["purity"]
    assert band["p5"] <= sig["purity_mean"] <= band["p95"]
    assert null["purity"]["p_value"] < 0.001 and null["purity"]["better"]
    assert null["purity"]["observed"] > null["purity"]["mean_p95"]
    # each latent's own purity: 8% above the single-set 95th percentile, where 1.6% of random sets are (the score
    # is discrete: "above the 95th percentile" is rarer than 5% by chance)
    assert null["purity"]["beyond_share"] > 3 * null["purity"]["beyond_chance"]
    assert null["purity"]["beyond_p_value"] < 0.001
