"""The k-SAE library (difflens.sae): the model, its training and the latent analysis, on small synthetic data whose
dictionary is known."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.sae.analysis import (attribute_auroc, image_scores, indicator_columns, latent_table, live_latents,
                                   random_baseline, sigma_label, top_images)
from difflens.sae.model import KSAE, SAEConfig, SAEError, SparseCode, geometric_median
from difflens.sae.train import SAETrainSettings, _aux_loss, default_lr, evaluate, train_sae


pytestmark = pytest.mark.usefixtures("two_threads")


def sparse_data(n: int = 4096, d: int = 16, atoms: int = 32, k: int = 3, seed: int = 0):
    """Vectors that are sums of k of ``atoms`` unit directions with positive weights, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g), dim=1)
    which = torch.stack([torch.randperm(atoms, generator=g)[:k] for _ in range(n)])
    weights = 0.5 + torch.rand(n, k, generator=g)
    x = (weights[..., None] * dictionary[which]).sum(1) + 0.3
    return x, dictionary, which


def test_topk_code_decodes_like_the_dense_product():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=8, n_latents=32, k=4))
    with torch.no_grad():
        sae.b_pre.normal_()
    x = torch.randn(5, 8)
    code = sae.encode(x)
    assert code.l0().tolist() == [4.0] * 5 and bool((code.values >= 0).all())
    dense = code.dense(32)
    pre = sae.pre_activations(x)
    assert torch.equal(dense.topk(4, dim=1).values, pre.topk(4, dim=1).values)  # the kept ones are the largest
    np.testing.assert_allclose(sae.decode(code).detach(), (dense @ sae.W_dec + sae.b_pre).detach(), atol=1e-5)
    assert torch.allclose(sae.decode_scaled(code, bias=False) + sae.b_pre, sae.decode_scaled(code))


def test_batchtopk_keeps_k_per_vector_on_average_and_thresholds_at_inference():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=8, n_latents=32, k=4, activation="batchtopk"))
    x = torch.randn(64, 8)
    pre = sae.pre_activations(x)
    code = sae.sparsify(pre, train=True)
    assert len(code.values) == 4 * 64 and code.l0().std() > 0  # k x b over the batch, unevenly spread
    sae.update_threshold(code)
    assert float(sae.threshold) == pytest.approx(float(code.values.detach().min()))
    alone = sae.encode(x[:1]).dense(32)
    together = sae.encode(x).dense(32)[:1]
    # an image's code does not depend on its batch (the same latents; values equal up to the matmul's rounding)
    assert torch.equal(alone > 0, together > 0) and torch.allclose(alone, together, atol=1e-6)
    assert bool((alone[alone > 0] > sae.threshold).all())


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_sparse_backward_equals_the_dense_one(activation):
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=8, n_latents=32, k=4, activation=activation)).double()
    with torch.no_grad():
        sae.b_pre.normal_()
        sae.encoder.bias.normal_(0, 0.3)
    x = torch.randn(6, 8, dtype=torch.float64)
    grads = []
    for sparse in (False, True):
        sae.zero_grad()
        pre = sae.pre_activations(x)
        code = sae.sparsify(pre.detach(), train=True)
        if sparse:
            code = sae.with_grad(x, code)
        else:  # autograd through the dense pre-activations
            code = SparseCode(code.indices, pre[code.rows(), code.indices], code.offsets)
        (sae.decode_scaled(code) - x).pow(3).sum().backward()
        grads.append([p.grad.clone() for p in (sae.encoder.weight, sae.encoder.bias, sae.b_pre, sae.W_dec)])
    for dense, sparse in zip(*grads):
        assert torch.allclose(dense, sparse, atol=1e-10) and dense.abs().sum() > 0


def test_decoder_rows_stay_unit_norm_and_their_gradient_loses_its_parallel_part():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=8, n_latents=16, k=2))
    sae(torch.randn(10, 8)).pow(2).sum().backward()
    sae.remove_parallel_grad()
    grad = sae.W_dec.grad.detach()
    assert float(grad.abs().max()) > 0.1  # float32 rounding of the removal is relative to the gradient's size
    assert float((grad * sae.W_dec.detach()).sum(1).abs().max()) < 1e-5 * float(grad.norm(dim=1).max())
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)


def test_geometric_median_resists_an_outlier():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])
    median = geometric_median(x)
    assert float(median.norm()) < 1.5 and float(x.mean(0).norm()) > 20
    # the summed distance is smaller there than at nearby points
    total = lambda p: float((x - p).norm(dim=1).sum())  # noqa: E731
    assert all(total(median) <= total(median + torch.tensor(dv)) for dv in ([0.05, 0], [0, 0.05], [-0.05, -0.05]))


def test_training_recovers_a_sparse_dictionary():
    x, dictionary, _ = sparse_data()
    settings = SAETrainSettings(steps=1000, batch_size=256, lr=3e-3, aux_coef=1 / 32, dead_after=2048, seed=1)
    sae, curve = train_sae(x, SAEConfig(d=16, n_latents=64, k=3), settings, device="cpu", progress=False)
    result = evaluate(sae, x)
    print({k: round(v, 3) for k, v in result.items() if np.isscalar(v)})
    assert curve[-1]["fvu"] < curve[0]["fvu"] and result["fvu"] <= 0.1 and result["l0"] == pytest.approx(3)
    # every true atom has a decoder row pointing its way
    best = (dictionary @ sae.W_dec.detach().T).max(1).values
    assert float(best.min()) > 0.9


def test_auxk_reconstructs_the_residual_from_dead_latents_without_b_pre():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=4, n_latents=8, k=1))
    with torch.no_grad():
        sae.b_pre.fill_(5.0)  # must not enter the auxiliary reconstruction
    x = torch.randn(6, 4) + 5.0  # around b_pre, so that the dead latents' pre-activations are not all 0
    pre = sae.pre_activations(x).detach()
    assert float(pre[:, 5:].max()) > 0
    residual = torch.randn(6, 4)  # detached, as the trainer passes it
    dead = torch.tensor([False] * 5 + [True] * 3)
    loss = _aux_loss(sae, x, pre, residual, dead, aux_k=2)
    values, idx = torch.where(dead, pre, torch.full_like(pre, -1.0)).topk(2, dim=1)
    by_hand = (values.clamp_min(0)[..., None] * sae.W_dec[idx]).sum(1)
    variance = (residual - residual.mean(0)).pow(2).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float((by_hand - residual).pow(2).sum(1).mean().detach() / variance), rel=1e-5)
    loss.backward()
    assert float(sae.W_dec.grad[~dead].abs().sum()) == 0 and float(sae.W_dec.grad[dead].abs().sum()) > 0
    assert float(_aux_loss(sae, x, pre, residual, torch.zeros(8, dtype=torch.bool), aux_k=2)) == 0.0


def test_training_is_seeded_and_save_load_round_trips(tmp_path):
    x, _, _ = sparse_data(n=512)
    settings = SAETrainSettings(steps=20, batch_size=64, seed=3)
    a, _ = train_sae(x, SAEConfig(d=16, n_latents=32, k=2, activation="batchtopk"), settings, device="cpu",
                     progress=False)
    torch.manual_seed(123)  # the global RNG plays no part: the same fit, run in a thread beside another, is equal
    with ThreadPoolExecutor(2) as pool:
        b, _ = pool.map(lambda seed: train_sae(x, SAEConfig(d=16, n_latents=32, k=2, activation="batchtopk"),
                                               SAETrainSettings(steps=20, batch_size=64, seed=seed), device="cpu",
                                               progress=False)[0], [3, 4])
    assert torch.equal(a.W_dec, b.W_dec) and float(a.threshold) == float(b.threshold) > 0
    a.save(tmp_path / "sae", extra={"layer": "mid_block"})
    c = KSAE.load(tmp_path / "sae")
    assert torch.equal(c.encode(x).dense(32), a.encode(x).dense(32))
    assert float(c.input_scale) == float(a.input_scale) != 1.0
    assert default_lr(2 ** 14) == pytest.approx(2e-4) and default_lr(2 ** 16) == pytest.approx(1e-4)


@pytest.mark.parametrize("make,match", [
    (lambda: SAEConfig(d=8, n_latents=8, k=8), r"k \(8\) must be smaller than n_latents \(8\)"),
    (lambda: SAEConfig(d=8, n_latents=16, k=2, activation="relu"), "activation 'relu' is not one of"),
    (lambda: KSAE(SAEConfig(d=8, n_latents=16, k=2)).encode(torch.zeros(3, 7)), r"input must be \(b, 8\), got \(3, 7\)"),
    (lambda: train_sae(torch.zeros(0, 8), SAEConfig(d=8, n_latents=16, k=2)), "non-empty"),
    (lambda: train_sae(torch.zeros(4, 6), SAEConfig(d=8, n_latents=16, k=2)), "d = 6 but the SAE's d is 8"),
    (lambda: KSAE.load("/nonexistent/sae"), "holds no sae_config.json"),
])
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(SAEError, match=match):
        make()


# ---- analysis -----------------------------------------------------------------------------------------------------
def test_sigma_label_and_purity_by_hand():
    # 12 images, 3 latents: latent 0 fires on the 11 images of label 0..; latent 1 on all; latent 2 on 2 images
    scores = torch.zeros(12, 3)
    scores[:11, 0] = torch.arange(11, 0, -1).float()
    scores[:, 1] = 1.0 + torch.arange(12).float()
    scores[:2, 2] = torch.tensor([5.0, 4.0])
    labels = np.array([0] * 10 + [1, 2])
    out = sigma_label(scores, labels)
    assert out["n_eligible"] == 2 and list(out["latents"]) == [1, 0]  # ranked by mean activation
    top1 = labels[np.argsort(-scores[:, 1].numpy())[:10]]  # images 11..2
    assert out["sigma"][0] == pytest.approx(top1.std()) and out["purity"][0] == pytest.approx(0.8)
    assert out["sigma"][1] == 0 and out["purity"][1] == 1.0 and out["sigma_label"] == pytest.approx(top1.std() / 2)
    base = random_baseline(labels, draws=200)
    assert base["purity"]["p5"] <= base["purity"]["mean"] <= base["purity"]["p95"] <= 1.0
    idx, values = top_images(scores, 3)
    assert idx.shape == (3, 3) and idx[2, :2].tolist() == [0, 1] and values[2, 2] == 0


def test_attribute_auroc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(np.where(rng.random((40, 5)) < 0.6, 0.0, rng.random((40, 5)))).float()
    rows = pd.DataFrame({"colour": rng.choice(["red", "blue", "green"], 40), "has_red": rng.integers(0, 2, 40),
                         "axis": rng.choice(["", "horizontal", "vertical"], 40)})
    names, ind = indicator_columns(rows, ["colour", "has_red", "axis"])
    assert names == ["colour=blue", "colour=green", "colour=red", "has_red=1", "axis=horizontal", "axis=vertical"]
    auc = attribute_auroc(scores, ind)
    for j in range(5):
        for m in range(len(names)):
            pos, neg = scores[ind[:, m] == 1, j].numpy(), scores[ind[:, m] == 0, j].numpy()
            pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
            assert auc[j, m] == pytest.approx(pairwise)
    with pytest.raises(SAEError, match="unknown column 'size'"):
        indicator_columns(rows, ["size"])


def test_spatial_scores_are_the_maximum_over_positions_and_the_table_names_latents():
    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=4, n_latents=8, k=2))
    x = torch.randn(6 * 9, 4)  # 6 images of 3 x 3 positions
    scores = image_scores(sae, x, positions=9, batch_size=20)
    per_position = sae.encode(x).dense(8).view(6, 9, 8)
    assert torch.equal(scores, per_position.amax(1))
    with pytest.raises(SAEError, match="not a whole number of images"):
        image_scores(sae, x[:-1], positions=9)
    labels = np.array([0, 0, 1, 1, 2, 2])
    names, ind = indicator_columns(pd.DataFrame({"label": labels}), ["label"])
    auc = attribute_auroc(scores, ind, live_latents(scores))
    table = latent_table(scores, labels, names, auc, top=3)
    with pytest.raises(SAEError, match="does not match"):
        latent_table(scores, labels, names[:1], auc, top=3)
    assert set(table.columns) >= {"latent", "frequency", "purity", "sigma", "best_attribute", "auroc"}
    assert table["best_attribute"].str.startswith("label=").all() and table["auroc"].between(0.5, 1).all()
