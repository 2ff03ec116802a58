"""The k-SAE library (difflens.sae): the model, its training and the latent analysis, on small synthetic data whose
dictionary is known."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.sae import memory
from difflens.sae.analysis import (attribute_auroc, average_ranks, image_scores, indicator_columns, latent_table,
                                   live_latents, random_baseline, sigma_label, top_images)
from difflens.sae.data import load_vectors
from difflens.sae.model import KSAE, SAEConfig, SAEError, SparseCode, geometric_median
from difflens.sae.train import SAETrainer, SAETrainSettings, _aux_loss, default_lr, evaluate, initial_sae, train_sae


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
    settings = SAETrainSettings(steps=1000, batch_size=256, lr=3e-3, aux_coef=1 / 32, dead_steps=8, seed=1)
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
    expected = (by_hand - residual).pow(2).sum(1).mean().detach() / variance
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert float(sae.W_dec.grad[~dead].abs().sum()) == 0 and float(sae.W_dec.grad[dead].abs().sum()) > 0
    assert float(_aux_loss(sae, x, pre, residual, torch.zeros(8, dtype=torch.bool), aux_k=2)) == 0.0


def test_dead_latents_are_counted_in_steps_and_passes():
    settings = SAETrainSettings()  # dead_steps 1000, dead_passes 10
    # the paper's sets are smaller than the batch of 8192, so a step is a pass: dead after 10 steps on each
    for n in (1020, 3312, 6074, 3334):  # Flowers-102, Pets, Caltech-101, Aircraft
        assert settings.patience(min(8192, n), n) == 10
    assert settings.patience(8192, 1_281_167) == 1000  # ImageNet-sized: 10 passes are 1,564 steps, dead_steps rules
    assert settings.patience(512, 8000) == 157 and settings.patience(512, None) == 1000  # a stream: no passes
    # the former count in vectors, still taken from code, alone: 10M vectors at batch 1020 are 9,804 steps
    assert SAETrainSettings(dead_after=10_000_000).patience(1020, 1020) == 9804
    assert SAETrainSettings(dead_after=20_000).patience(512, 2400) == 40  # tests/test_sae_science.py's
    with pytest.raises(SAEError, match=r"dead_steps=0, dead_passes=0"):
        SAETrainSettings(dead_steps=0, dead_passes=0)


def test_auxk_engages_on_a_thousand_vectors_within_a_few_steps():
    """1,000 vectors (Flowers-102 has 1,020 for training), batch 8192 capped at the set: latents are dead from step
    10 on (10 passes), the AuxK loss acts exactly while some are, and it gives the dead latents' decoder rows the
    gradients that the reconstruction loss never gives them. (The former count, 10M vectors, came due after 10,000
    steps here: ``test_dead_latents_are_counted_in_steps_and_passes``.)"""
    x, _, _ = sparse_data(n=1000, d=16, atoms=32, k=3)
    config = SAEConfig(d=16, n_latents=512, k=2)
    out = {}
    for coef in (1 / 32, 0.0):
        g = torch.Generator().manual_seed(0)
        sae = KSAE(config, generator=g)
        sae.init_from_sample(x)
        trainer = SAETrainer(sae, SAETrainSettings(batch_size=8192, lr=3e-3, aux_coef=coef), n_vectors=len(x))
        steps = []
        for step in range(1, 21):
            was_dead = trainer.dead().clone()
            aux = float(trainer.step(x[torch.randint(0, len(x), (len(x),), generator=g)])["aux"])
            steps.append((step, int(trainer.dead().sum()), aux))
        still = was_dead & trainer.dead()  # dead through the last step: only AuxK can have given them gradients
        out[coef] = steps, float(sae.W_dec.grad[still].abs().sum(1).gt(0).float().mean())
    steps, with_grad = out[1 / 32]
    print("dead latents and AuxK loss by step:", steps[8:14], "; dead rows with a gradient:", with_grad,
          "(without AuxK:", out[0.0][1], ")")
    assert trainer.patience == 10 and [s for s, dead, _ in steps if dead][0] == 10 and steps[-1][1] > 10
    assert all((aux > 0) == (dead > 0) for _, dead, aux in steps)
    assert with_grad > 0.5 and out[0.0][1] == 0.0 and all(aux == 0 for _, _, aux in out[0.0][0])


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
    (lambda: KSAE(SAEConfig(d=8, n_latents=16, k=2)).encode(torch.zeros(3, 7)),
     r"input must be \(b, 8\), got \(3, 7\)"),
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
            wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
            pairwise = wins / (len(pos) * len(neg))
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


def tied_scores(images: int = 60, latents: int = 40, seed: int = 0) -> torch.Tensor:
    """Sparse scores with many ties: most entries 0, the others one of 5 values; latent 0 never fires."""
    rng = np.random.default_rng(seed)
    s = np.where(rng.random((images, latents)) < 0.3, rng.integers(1, 6, (images, latents)) / 5, 0.0)
    s[:, 0] = 0
    return torch.from_numpy(s.astype(np.float32))


def test_chunked_auroc_equals_the_whole_computation_with_ties():
    scores = tied_scores()
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"label": rng.integers(0, 4, 60), "has_x": rng.integers(0, 2, 60)})
    names, ind = indicator_columns(rows, ["label", "has_x"])
    live = live_latents(scores)
    assert live[0] == 1 and len(live) == 39
    whole = attribute_auroc(scores, ind, live, chunk=len(live))  # every latent ranked at once, as before
    s = scores.numpy()
    pos = ind.sum(0)
    by_definition = (average_ranks(s[:, live]).T @ ind - pos * (pos + 1) / 2) / (pos * (len(ind) - pos))
    assert np.array_equal(whole, by_definition)
    for chunk in (1, 7, None):
        assert np.array_equal(attribute_auroc(scores, ind, live, chunk=chunk), whole), chunk
    assert np.array_equal(attribute_auroc(scores, ind, chunk=3)[live], whole)
    # ranks of a chunk of columns are those columns' ranks in the whole matrix
    assert np.array_equal(average_ranks(s[:, 5:9]), average_ranks(s)[:, 5:9])


def test_top_images_keep_image_order_among_equal_scores():
    scores = tied_scores()
    idx, values = top_images(scores, 10)
    for j in range(scores.shape[1]):
        column = scores[:, j].numpy()
        expected = sorted(range(len(column)), key=lambda i: (-column[i], i))[:10]  # higher score, then lower image
        assert idx[j].tolist() == expected and np.array_equal(values[j], column[expected])
    part, _ = top_images(scores, 10, latents=[7, 3], chunk=1)
    assert np.array_equal(part, idx[[7, 3]])


def test_latent_statistics_and_purity_in_blocks_match_the_whole_matrix(monkeypatch):
    from difflens.sae import analysis

    scores = tied_scores(images=50, latents=30)
    monkeypatch.setattr(memory, "CHUNK_BYTES", 30 * 7)  # blocks of 7 images
    fires, mean = analysis.latent_stats(scores)
    assert np.array_equal(fires, (scores > 0).sum(0).numpy())
    assert np.allclose(mean, scores.double().mean(0).numpy(), rtol=1e-12)
    labels = np.random.default_rng(2).integers(0, 5, (20, 10))
    sigma, purity = analysis.sigma_and_purity(labels)
    assert np.array_equal(purity, [np.bincount(row).max() / 10 for row in labels])
    assert np.array_equal(sigma, labels.std(1))


# ---- memory -------------------------------------------------------------------------------------------------------
def test_memory_formulas_count_what_the_jobs_hold():
    mb = memory.model_bytes(1280, 81920)
    assert mb == (2 * 81920 * 1280 + 81920 + 2 * 1280) * 4
    # the Flowers-102 test split, 64 x 1280 latents: scores, the model twice, a chunk, AUROC and latent tables, grid
    flowers = memory.analysis_bytes(6149, 1, 1280, 81920, 102)
    scores = 6149 * 81920 * 4
    assert flowers == (6149 * 1280 * 4 + 2 * mb + scores + memory.CHUNK_BYTES
                       + 81920 * (102 * 8 + memory.TABLE_BYTES_PER_LATENT) + memory.GRID_BYTES)
    assert scores + memory.CHUNK_BYTES < flowers < 2.5 * scores  # ranking every latent at once held 13.5 x scores
    # each extra image adds its vector and its scores; spatial input adds the map's vectors and a reading batch
    assert memory.analysis_bytes(6150, 1, 1280, 81920, 102) - flowers == 1280 * 4 + 81920 * 4
    assert memory.vectors_bytes(10, 256, 64, 256) == 10 * 256 * 64 * 4 + 256 * 256 * 64 * 4
    # training: the batch is capped at the train vectors; Adam holds 4 x the parameters
    small, large = (memory.train_bytes(n, 1020, 1, 1280, 81920, 8192) for n in (1020, 8192))
    assert large - small == (8192 - 1020) * 1280 * 4 + 3 * (8192 - 1020) * 1280 * 4 + 3 * (8192 - 1020) * 81920 * 4
    assert memory.train_bytes(1020, 1020, 1, 1280, 81920, 8192) > 4 * mb
    assert memory.encode_batch(81920) == 409 and memory.latent_chunk(6149, 64) == 682
    assert memory.encode_batch(10 ** 12) == 1 and memory.latent_chunk(0, 64) == memory.CHUNK_BYTES // 64


def test_job_sizes_read_the_index_entry_and_the_data_set(tmp_path):
    rows = pd.DataFrame({"sample_id": [f"s{i}" for i in range(7)], "split": ["train"] * 4 + ["val", "test", "test"],
                         "label": [0, 1, 2, 0, 1, 2, -1], "colour": ["red", "", "blue", "red", "red", "-1", "blue"],
                         "has_red": [1, 0, 1, 1, 1, 0, 0], "constant": [0] * 7})
    rows.to_csv(tmp_path / "samples.csv", index=False)
    (tmp_path / "dataset.json").write_text('{"attributes": ["colour", "has_red", "constant"]}')
    ds = memory.dataset_sizes(tmp_path / "dataset.json")
    names, _ = indicator_columns(rows, ["label", "colour", "has_red", "constant"])
    # an upper bound: the count takes constant=1 too, which no image has
    assert ds == {"splits": {"train": 4, "val": 1, "test": 2}, "indicators": 7} and len(names) == 6
    entry = {"channels": 64, "map_shape": [64, 8, 8], "n_valid": 7}
    pooled, spatial = (memory.job_sizes(entry, ds, inp, 16) for inp in ("pooled", "spatial"))
    assert (pooled["grid"], pooled["train_positions"], spatial["grid"], spatial["train_positions"]) == (1, 1, 64, 16)
    assert memory.train_job_bytes(spatial, 4, 512) == memory.train_bytes(4, 1, 16, 64, 256, 512, 64)
    assert memory.analysis_job_bytes(pooled, 4, "test") == memory.analysis_bytes(2, 1, 64, 256, 7)


class _MapStore:
    """A stand-in for the feature store: ``n`` images of (C, 3, 3) float16 maps whose value at channel c, position p
    of image i is i + p / 10 + c / 100, read in batches of 256."""

    def __init__(self, n: int, c: int = 4, extra: int = 0, grid: int = 3, ones: bool = False):
        self.n, self.c, self.extra, self.grid, self.ones = n, c, extra, grid, ones

    def rows(self, *args, split):
        return pd.DataFrame({"sample_id": [f"s{i}" for i in range(self.n)]})

    def iter_maps(self, *args, split, batch_size, dtype):
        from types import SimpleNamespace

        total = self.n + self.extra
        for a in range(0, total, batch_size):
            i = np.arange(a, min(total, a + batch_size))[:, None, None, None]
            if self.ones:
                yield SimpleNamespace(sample_id=np.array([f"s{k}" for k in i.ravel()]),
                                      x=np.ones((len(i), self.c, self.grid, self.grid), dtype))
                continue
            x = i + np.arange(9).reshape(1, 1, 3, 3) / 10 + np.arange(self.c).reshape(1, -1, 1, 1) / 100
            yield SimpleNamespace(sample_id=np.array([f"s{k}" for k in i.ravel()]), x=x.astype(dtype))


def test_spatial_vectors_fill_one_float32_array_in_row_order():
    x, rows, per_image = load_vectors(_MapStore(300), "m", "d", "l", 25, input="spatial", split="train")
    expected = (np.arange(300)[:, None, None] + np.arange(9)[None, :, None] / 10 + np.arange(4) / 100).reshape(-1, 4)
    assert per_image == 9 and x.dtype == torch.float32 and x.shape == (2700, 4)
    assert np.array_equal(x.numpy(), expected.astype(np.float16).astype(np.float32))
    drawn, _, per_image = load_vectors(_MapStore(300), "m", "d", "l", 25, input="spatial", split="train",
                                       positions=2, seed=3)
    assert per_image == 2 and drawn.shape == (600, 4)
    assert set(drawn[:2, 0].tolist()) <= set(x[:9, 0].tolist())  # image 0's vectors, two of its positions
    with pytest.raises(SAEError, match=r"maps rows \(301\) do not match the row table \(300\)"):
        load_vectors(_MapStore(300, extra=1), "m", "d", "l", 25, input="spatial", split="train")


def test_spatial_vectors_are_read_without_a_second_copy_of_them():
    import tracemalloc

    store = _MapStore(1024, c=64, grid=8, ones=True)  # 64 positions of 64 channels per image: 16 MiB of float32
    tracemalloc.start()
    try:
        x, _, _ = load_vectors(store, "m", "d", "l", 25, input="spatial", split="train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    batch = 256 * 64 * 64 * 2  # one batch of float16 maps as the store gives it
    print(f"vectors {x.numpy().nbytes / 2 ** 20:.1f} MiB, peak {peak / 2 ** 20:.1f} MiB")
    assert x.shape == (1024 * 64, 64) and peak <= x.numpy().nbytes + 3 * batch  # concatenating held 2 x the vectors


def test_warmup_ramps_the_learning_rate_linearly_then_holds_it():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    sae, _ = initial_sae(x, SAEConfig(d=8, n_latents=16, k=2), 0)
    trainer = SAETrainer(sae, SAETrainSettings(steps=6, batch_size=64, lr=1e-3, warmup_steps=4), 300)
    seen = []
    for _ in range(6):
        seen.append(trainer.opt.param_groups[0]["lr"])
        trainer.step(x[:64])
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    with pytest.raises(SAEError, match="warmup_steps=-1"):
        SAETrainSettings(warmup_steps=-1)
