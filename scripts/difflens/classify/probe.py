"""Linear probes on pooled feature vectors, and a rank-based AUROC.

The probe is a multinomial logistic regression, fitted in torch (LBFGS, float32) on features standardised (in
float64) with the train split's mean and standard deviation. Its loss is the mean cross-entropy plus ``l2 / 2 * ||W||^2`` (the
bias is not penalised). One fit per L2 strength of the grid; the strength is picked on val accuracy (ties: the
earlier in the grid), and the test split is scored once, with the picked one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_L2_GRID = (1e-3, 1e-2, 1e-1)


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


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int, seed: int,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (d, k) and bias (k,) of a multinomial logistic regression on standardised ``x`` (in its dtype), by
    LBFGS from ``start`` (e.g. the fit of a neighbouring L2 strength) or a small seeded start; the loss is convex,
    so the start only matters within the optimiser's tolerance."""
    if start is None:
        gen = torch.Generator().manual_seed(seed)
        start = (0.01 * torch.randn(x.shape[1], n_classes, generator=gen, dtype=x.dtype),
                 torch.zeros(n_classes, dtype=x.dtype))
    w, b = (t.clone().requires_grad_() for t in start)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-5, tolerance_change=1e-7)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    return float(((x @ w + b).argmax(1) == y).double().mean())


def fit_probe(x_train, y_train, x_val, y_val, x_test, y_test, *, l2_grid=DEFAULT_L2_GRID, max_iter: int = 50,
              seed: int = 0) -> dict:
    """Fit one probe per L2 strength on train, pick the strength on val, score the picked probe on test once.

    Inputs are numpy arrays or tensors: features (n, d), integer labels (n,); the classes are 0..(largest label of
    any split). Returns val, test and train accuracy of the picked probe, its ``l2``, the val accuracy of every
    strength (``val_by_l2``), and the rows, features and classes.
    """
    (xt, yt), (xv, yv), (xs, ys) = (_as_xy(x, y, s) for x, y, s in ((x_train, y_train, "train"),
                                                                    (x_val, y_val, "val"), (x_test, y_test, "test")))
    if not len(l2_grid) or any(not l2 >= 0 for l2 in l2_grid):
        raise ValueError(f"probe: l2_grid must hold strengths >= 0, got {l2_grid!r}")
    if len(set(yt.tolist())) < 2:
        raise ValueError(f"probe: the train split holds {len(set(yt.tolist()))} class(es) ({sorted(set(yt.tolist()))})"
                         f"; it needs at least 2")
    if not xt.shape[1] == xv.shape[1] == xs.shape[1]:
        raise ValueError(f"probe: feature widths differ: train {xt.shape[1]}, val {xv.shape[1]}, test {xs.shape[1]}")
    mean, std = standardise(xt)
    xt, xv, xs = (((x - mean) / std).float() for x in (xt, xv, xs))  # standardised: float32 is plenty
    n_classes = int(max(yt.max(), yv.max(), ys.max())) + 1
    fits = []
    for l2 in l2_grid:  # each strength starts from the previous one's fit
        fits.append(fit_logistic(xt, yt, n_classes, float(l2), max_iter, seed, fits[-1] if fits else None))
    val = [_accuracy(xv, yv, *fit) for fit in fits]
    best = int(np.argmax(val))  # the first of the best
    return {"val_accuracy": val[best], "test_accuracy": _accuracy(xs, ys, *fits[best]),
            "train_accuracy": _accuracy(xt, yt, *fits[best]), "l2": float(l2_grid[best]),
            "val_by_l2": [{"l2": float(l2), "val_accuracy": acc} for l2, acc in zip(l2_grid, val)],
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
