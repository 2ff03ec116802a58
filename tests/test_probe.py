"""The linear probe (``difflens.classify.probe``) against scikit-learn's ``LogisticRegression`` fitting the same
loss, on seeded synthetic problems whose standardised features are as ill-conditioned as pooled U-Net features
(second moment spread over about six decades, signal in the weak directions too): the same weights and test
accuracy at the same strength and at the strength the probe picks on val, every fit within the gradient tolerance,
and the old setting (L2 1e-3..1e-1, 50 plain L-BFGS steps) short of both."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from difflens.classify.probe import (DEFAULT_L2_GRID, MAX_ITER, TOLERANCE, eigenbasis, fit_logistic, fit_probe,
                                     logistic_loss, standardise)

pytestmark = pytest.mark.usefixtures("two_threads")

SMALL = dict(n_train=300, d=30, k=4, informative=10)  # a few hundred rows
LARGE = dict(n_train=3000, d=48, k=6, informative=24)  # where 50 plain L-BFGS steps under-fit


def problem(n_train: int, d: int, k: int, informative: int, *, n_eval: int = 1000, seed: int = 0) -> list:
    """Train, val and test features (n, d) and labels: class means N(0, 0.5^2) in ``informative`` of d latent
    dimensions (the rest noise), unit noise, each latent dimension scaled by one of d log-spaced factors from 1 to
    1e-3, the whole rotated at random and shifted."""
    gen = np.random.default_rng(seed)
    means = np.zeros((k, d))
    means[:, :informative] = gen.normal(0, 0.5, (k, informative))
    scale, rotation = gen.permutation(np.logspace(0, -3, d)), np.linalg.qr(gen.normal(size=(d, d)))[0]
    shift, out = gen.normal(size=d), []
    for n in (n_train, n_eval, n_eval):
        y = gen.integers(0, k, n)
        out += [((gen.normal(size=(n, d)) + means[y]) * scale) @ rotation + shift, y]
    return out


def standardised(parts: list) -> list[torch.Tensor]:
    """The splits' features standardised with the train split's statistics (as ``fit_probe`` does), and labels."""
    x = [torch.as_tensor(p) for p in parts]
    mean, std = standardise(x[0])
    return [t if i % 2 else (t - mean) / std for i, t in enumerate(x)]


def sklearn_fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> LogisticRegression:
    """scikit-learn on the probe's loss: C * sum(CE) + ||w||^2 / 2 is n * C * (mean CE + ||w||^2 / (2 n C)), so
    C = 1 / (n * l2); two classes: one weight vector v = w_1 - w_0 where the probe's optimum has w_0 = -w_1, so the
    probe's penalty is l2 / 4 * ||v||^2 and C = 2 / (n * l2). Run to a tight tolerance."""
    c = (2 if len(np.unique(y)) == 2 else 1) / (len(y) * l2)
    return LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(x.numpy(), y.numpy())


def accuracy(x, y, w, b) -> float:
    return float(((x @ w + b).argmax(1) == y).double().mean())


def test_default_grid_is_every_decade_from_1e_6_to_10():
    assert DEFAULT_L2_GRID == pytest.approx([10.0 ** e for e in range(-6, 2)], rel=1e-12)


@pytest.mark.parametrize("k", [4, 2])
def test_weights_are_sklearns_at_the_same_strength(k):
    """At l2 = 1e-2 on the small problem: the probe's weights are scikit-learn's (two classes: the difference of
    its two columns is scikit-learn's one vector), so the loss scaling C = 1 / (n * l2) (2 / (n * l2)) is exact;
    the test accuracies agree."""
    xt, yt, _, _, xs, ys = standardised(problem(**{**SMALL, "k": k}))
    w, b, report = fit_logistic(xt, yt, k, 1e-2)
    sk = sklearn_fit(xt, yt, 1e-2)
    ours = w if k > 2 else w[:, 1:] - w[:, :1]
    theirs = torch.as_tensor(sk.coef_.T)
    assert report["stop"] == "gradient" and (ours - theirs).abs().max() <= 1e-3 * theirs.abs().max(), report
    assert abs(accuracy(xs, ys, w, b) - sk.score(xs.numpy(), ys.numpy())) <= 0.01


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
def test_test_accuracy_is_sklearns_at_a_fixed_and_at_the_picked_strength(size):
    """The probe's test accuracy at l2 = 1e-3 and at its val-picked strength is within 0.01 of scikit-learn's at
    the same strength; on these problems val picks a strength below the old grid's 1e-3..1e-1."""
    parts = problem(**size)
    xt, yt, xv, yv, xs, ys = standardised(parts)
    result = fit_probe(*parts)
    assert result["l2"] <= 1e-4, result["val_by_l2"]
    assert abs(result["test_accuracy"] - sklearn_fit(xt, yt, result["l2"]).score(xs.numpy(), ys.numpy())) <= 0.01
    w, b, _ = fit_logistic(xt, yt, size["k"], 1e-3)
    assert abs(accuracy(xs, ys, w, b) - sklearn_fit(xt, yt, 1e-3).score(xs.numpy(), ys.numpy())) <= 0.01


def test_the_old_setting_under_fits_where_the_probe_converges():
    """The large problem: at the picked strength, 50 plain L-BFGS steps (the old setting; no whitening: the basis
    is the identity) stop with a gradient over 1,000 times the tolerance and a test accuracy more than 0.05 under
    scikit-learn's, which the probe meets; the old grid (1e-3..1e-1), even run to the tolerance, scores more than
    0.05 under the new one on test."""
    parts = problem(**LARGE)
    xt, yt, _, _, xs, ys = standardised(parts)
    result = fit_probe(*parts)
    target = sklearn_fit(xt, yt, result["l2"]).score(xs.numpy(), ys.numpy())
    d = xt.shape[1]
    plain = (xt, torch.eye(d, dtype=xt.dtype), torch.ones(d, dtype=xt.dtype))
    w, b, report = fit_logistic(xt, yt, LARGE["k"], result["l2"], max_iter=50, basis=plain)
    assert report["stop"] == "max_iter" and report["gradient"] > 1000 * TOLERANCE, report
    assert accuracy(xs, ys, w, b) < target - 0.05 and result["test_accuracy"] >= target - 0.01
    old_grid = fit_probe(*parts, l2_grid=(1e-3, 1e-2, 1e-1))
    assert old_grid["test_accuracy"] < result["test_accuracy"] - 0.05, (old_grid, result)


@pytest.mark.parametrize("l2", [10.0, 1e-3, 1e-6])
def test_returned_weights_meet_the_gradient_tolerance(l2):
    """The loss's gradient at the returned weights (autograd of ``logistic_loss``, not the fit's own gradient),
    taken to the whitened coordinates, is at most TOLERANCE in every entry, well before MAX_ITER; the report says
    the same."""
    xt, yt, *_ = standardised(problem(**LARGE))
    w, b, report = fit_logistic(xt, yt, LARGE["k"], l2)
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    logistic_loss(xt, yt, w, b, l2).backward()
    _, v, lam = eigenbasis(xt)
    gradient = max(float(((v.T @ w.grad) / (lam + l2).sqrt()[:, None]).abs().max()), float(b.grad.abs().max()))
    assert gradient <= TOLERANCE and report["gradient"] == pytest.approx(gradient, rel=1e-6), (gradient, report)
    assert report["stop"] == "gradient" and report["iterations"] < MAX_ITER // 2, report


def test_grid_order_ties_and_row_order():
    """val_by_l2 runs strongest first; the pick is its first best, so a tie goes to the stronger strength; the same
    inputs give the same probe, and shuffling the train rows moves no accuracy by more than a row (summation order
    aside, it is the same full-batch fit; measured: no change)."""
    parts = problem(**SMALL)
    result = fit_probe(*parts)
    assert [r["l2"] for r in result["val_by_l2"]] == sorted(DEFAULT_L2_GRID, reverse=True)
    vals = [r["val_accuracy"] for r in result["val_by_l2"]]
    assert result["l2"] == result["val_by_l2"][vals.index(max(vals))]["l2"]
    assert fit_probe(*parts, l2_grid=(1e-2, 1.000001e-2))["l2"] == 1.000001e-2
    assert fit_probe(*parts) == result
    order = np.random.default_rng(1).permutation(len(parts[1]))
    shuffled = fit_probe(parts[0][order], parts[1][order], *parts[2:])
    key = ("val_accuracy", "test_accuracy", "train_accuracy", "l2")
    assert [shuffled[k] for k in key] == pytest.approx([result[k] for k in key], abs=1.5e-3)  # a row at most
    assert [r["val_accuracy"] for r in shuffled["val_by_l2"]] == pytest.approx(vals, abs=1.5e-3)


@pytest.mark.parametrize("grid", [(0.0, 1e-2), (), (-1e-3,)])
def test_the_grid_needs_positive_strengths(grid):
    parts = problem(**SMALL)
    with pytest.raises(ValueError, match=r"l2_grid must hold strengths > 0"):
        fit_probe(*parts, l2_grid=grid)
    with pytest.raises(ValueError, match=r"L2 strength must be > 0, got 0"):
        fit_logistic(*standardised(parts)[:2], SMALL["k"], 0)
