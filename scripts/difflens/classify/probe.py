"""Linear probes on pooled feature vectors, and a rank-based AUROC.

The probe is a multinomial logistic regression on features standardised with the train split's mean and standard
deviation. Its loss is the mean cross-entropy plus ``l2 / 2 * ||W||^2`` (the bias is not penalised): scikit-learn's
``LogisticRegression`` with ``C = 1 / (n_train * l2)`` for three or more classes (two classes:
``C = 2 / (n_train * l2)``, as scikit-learn fits one weight vector where the probe fits two). One fit per L2
strength of the grid (``DEFAULT_L2_GRID``: every decade from 1e-6 to 10), from the strongest to the weakest, each
starting from the previous one's weights. A fit is full-batch L-BFGS (torch, float64, strong-Wolfe line search) on
whitened features (``fit_logistic``), run to a tolerance: until the largest gradient entry there is at most
``TOLERANCE``, or the loss or the weights change by less than ``TOLERANCE_CHANGE`` in a step, or after ``MAX_ITER``
iterations (a fit stopped by the cap logs a warning). The strength is picked on val accuracy (ties: the stronger),
and the test split is scored once, with the picked one. No batches and no shuffling: the same inputs give the same
probe.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
TOLERANCE = 1e-6  # on the largest gradient entry of the weights of the whitened features, and of the bias
TOLERANCE_CHANGE = 1e-12  # on the loss's change (and the weights' largest change) in one L-BFGS step
MAX_ITER = 1000  # L-BFGS iterations per strength


def _tensor(a) -> torch.Tensor:
    """A CPU tensor of an array or tensor."""
    return a.detach().cpu() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))


def _as_xy(x, y, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (n, d) float64 and labels (n,) int64 of one split; ValueError for an empty or mis-shaped split."""
    x, y = _tensor(x).to(torch.float64), _tensor(y)
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"probe: {split} needs features (n, d) and labels (n,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError(f"probe: the {split} split is empty")
    if y.is_floating_point() or y.dtype == torch.bool or int(y.min()) < 0:
        raise ValueError(f"probe: {split} labels must be integers >= 0, got {y.dtype} from {y.min().item()}")
    if not torch.isfinite(x).all():
        raise ValueError(f"probe: {split} features hold {int((~torch.isfinite(x)).sum())} non-finite values")
    return x, y.long()


def standardise(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the train features (a constant feature gets 1, so it maps to 0)."""
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def logistic_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    """The probe's loss: mean cross-entropy of the logits ``x @ w + b`` plus ``l2 / 2 * ||w||^2``."""
    return F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()


def eigenbasis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x @ v``, ``v`` and ``lam``: the eigenvectors (columns) and eigenvalues (>= 0) of the second moment
    ``x.T @ x / n`` of standardised features, the basis ``fit_logistic`` whitens in."""
    lam, v = torch.linalg.eigh(x.T @ x / len(x))
    return x @ v, v, lam.clamp_min(0)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, *, max_iter: int = MAX_ITER,
                 seed: int = 0, start: tuple[torch.Tensor, torch.Tensor] | None = None,
                 basis: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, tolerance: float = TOLERANCE,
                 tolerance_change: float = TOLERANCE_CHANGE) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Weights (d, k), bias (k,) and a report of the multinomial logistic regression (``logistic_loss``, ``l2 > 0``)
    on standardised ``x`` (in its dtype), by L-BFGS from ``start`` (e.g. the fit of a neighbouring L2 strength) or a
    small seeded start.

    L-BFGS runs on ``u``, the weights of the whitened features ``x @ v * s``, ``s = (lam + l2) ** -0.5`` (``basis``,
    from ``eigenbasis(x)`` when not given), so ``W = v @ (s * u)``: there the loss's curvature is between the
    softmax's and 1 in every direction, where standardised pooled features can spread it over six decades (and
    leave L-BFGS far from the optimum after 50 steps). It runs until the largest absolute gradient entry of ``u``
    (``s * (v.T @ dloss/dW)``: the mean residual's covariance with each whitened feature, plus the penalty's share)
    and of the bias is at most ``tolerance``, or the loss or ``u`` change by less than ``tolerance_change`` in a
    step, or after ``max_iter`` iterations. On linearly separable train data the weakest strengths' optima lie far
    along a nearly flat valley, where the loss-change tolerance (like any tolerance, scikit-learn's too) stops short
    of them and ``max_iter`` bounds the time. The report: ``iterations``, ``gradient`` (that largest entry at the
    returned weights) and ``stop``: ``gradient`` (``gradient <= tolerance``), ``loss change`` or ``max_iter``. The
    loss is strictly convex, so the start only matters within the tolerance."""
    if not l2 > 0:
        raise ValueError(f"probe: the L2 strength must be > 0, got {l2!r}")
    xv, v, lam = basis if basis is not None else eigenbasis(x)
    s = (lam + l2).rsqrt()[:, None]
    z = xv * s.T
    if start is None:
        gen = torch.Generator().manual_seed(seed)
        start = (0.01 * torch.randn(x.shape[1], n_classes, generator=gen, dtype=x.dtype),
                 torch.zeros(n_classes, dtype=x.dtype))
    u, b = (v.T @ start[0]) / s, start[1].clone()
    opt = torch.optim.LBFGS([u, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=tolerance, tolerance_change=tolerance_change)
    rows, penalty = torch.arange(len(y)), l2 * s * s

    def closure():  # the loss, and its gradient by hand (no autograd: a third of the time)
        log_p = (z @ u + b).log_softmax(1)
        residual = log_p.exp()
        residual[rows, y] -= 1
        residual /= len(y)
        u.grad, b.grad = z.T @ residual + penalty * u, residual.sum(0)
        return -log_p[rows, y].mean() + 0.5 * (penalty * u * u).sum()

    opt.step(closure)
    closure()  # the gradient where L-BFGS stopped
    gradient, done = float(max(u.grad.abs().max(), b.grad.abs().max())), opt.state[u]["n_iter"]
    stop = "gradient" if gradient <= tolerance else "max_iter" if done >= max_iter else "loss change"
    report = {"iterations": done, "gradient": gradient, "stop": stop}
    return (v @ (s * u)).detach(), b.detach(), report


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float(((x @ w + b).argmax(1) == y).double().mean())


def fit_probe(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid=DEFAULT_L2_GRID, max_iter: int = MAX_ITER,
              seed: int = 0) -> dict:
    """Fit one probe per L2 strength on train (strongest first, each from the previous fit), pick the strength on
    val, score the picked probe on test once.

    Inputs are numpy arrays or tensors: features (n, d), integer labels (n,); the classes are 0..(largest label of
    any split). Returns val, test and train accuracy of the picked probe, its ``l2``, the val accuracy and L-BFGS
    iterations of every strength, strongest first (``val_by_l2``; the picked one is the first of the best), and
    the rows, features and classes.
    """
    (xt, yt), (xv, yv), (xs, ys) = (_as_xy(x, y, s) for x, y, s in ((x_train, y_train, "train"),
                                                                    (x_val, y_val, "val"), (x_test, y_test, "test")))
    if not len(l2_grid) or any(not l2 > 0 for l2 in l2_grid):
        raise ValueError(f"probe: l2_grid must hold strengths > 0, got {l2_grid!r}")
    if len(set(yt.tolist())) < 2:
        raise ValueError(f"probe: the train split holds {len(set(yt.tolist()))} class(es) ({sorted(set(yt.tolist()))})"
                         f"; it needs at least 2")
    if not xt.shape[1] == xv.shape[1] == xs.shape[1]:
        raise ValueError(f"probe: feature widths differ: train {xt.shape[1]}, val {xv.shape[1]}, test {xs.shape[1]}")
    mean, std = standardise(xt)
    xt, xv, xs = ((x - mean) / std for x in (xt, xv, xs))
    n_classes = int(max(yt.max(), yv.max(), ys.max())) + 1
    grid, basis, fits = sorted({float(l2) for l2 in l2_grid}, reverse=True), eigenbasis(xt), []
    for l2 in grid:  # each strength starts from the previous (stronger) one's fit
        fits.append(fit_logistic(xt, yt, n_classes, l2, max_iter=max_iter, seed=seed,
                                 start=fits[-1][:2] if fits else None, basis=basis))
        if fits[-1][2]["stop"] == "max_iter":
            log.warning("probe: L-BFGS at l2=%g stopped after %d iterations with gradient %.2e > %.0e (n %d, d %d, "
                        "%d classes)", l2, max_iter, fits[-1][2]["gradient"], TOLERANCE, len(yt), xt.shape[1],
                        n_classes)
    val = [_accuracy(xv, yv, w, b) for w, b, _ in fits]
    best = int(np.argmax(val))  # the first of the best: the strongest
    w, b, _ = fits[best]
    return {"val_accuracy": val[best], "test_accuracy": _accuracy(xs, ys, w, b),
            "train_accuracy": _accuracy(xt, yt, w, b), "l2": grid[best],
            "val_by_l2": [{"l2": l2, "val_accuracy": acc, "iterations": fit[2]["iterations"]}
                          for l2, acc, fit in zip(grid, val, fits)],
            "n_train": len(yt), "n_val": len(yv), "n_test": len(ys), "n_features": int(xt.shape[1]),
            "n_classes": n_classes}


def auroc(scores, labels01) -> float:
    """Area under the ROC curve of ``scores`` for the positives of ``labels01`` (0/1 or bool): the Mann-Whitney
    statistic from ranks, tied scores sharing their mean rank (a tie between a positive and a negative counts 1/2)."""
    s, y = _tensor(scores).numpy().astype(np.float64), _tensor(labels01).numpy()
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"auroc: scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"auroc: {int((~np.isfinite(s)).sum())} scores are not finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"auroc: labels must be 0 or 1, got {sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc: needs positives and negatives, got {n_pos} positive and {n_neg} negative")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
