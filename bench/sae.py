"""Benchmark: difflens' k-SAE against EleutherAI's sparsify (``SparseCoder``) and overcomplete (``TopKSAE``), in one
run, on the same vectors and settings (d, n, k, lr, batch, steps, AuxK on or off, seed).

Two synthetic data sets (no download; the train batches and the held-out vectors are drawn from different seeds):

* ``activations``: vectors that look like pooled diffusion features (synthetic: the shipped shapes model's are at most
  64 wide): a large common offset (3x the spread), an anisotropic Gaussian background (power-law spectrum in
  a random basis), and heavy-tailed sparse structure: k / 2 draws per vector from 4 d feature directions with Zipf
  frequencies and log-normal magnitudes, the directions themselves concentrated in the top principal directions;
* ``planted``: a sparse dictionary with known atoms: each vector is the sum of k / 2 of 4 d random unit atoms with
  weights in [0.5, 1.5], plus isotropic noise (norm 0.1) and a fixed offset (norm 4).

The three SAEs (``bench/sae_peers.py`` says how each is trained) see the same batches in the same order and the same
evaluation: steps/s over the timed steps (after the warm-up steps), and after all steps on the held-out vectors the
FVU (squared error over the variance around their mean), the fraction of latents that fire on none of them, and on
``planted`` the mean over the true atoms of their best cosine with a normalised decoder row. A peer that is not
installed (``pip install --no-deps -r requirements-bench.txt``) is skipped with the reason.

    python bench/sae.py                   # GPU: d 1280, n 81,920, k 32, batch 8192, 200 steps
                                          # CPU: d 128, n 1024, k 16, batch 256, 400 steps (about 2 minutes)
    python bench/sae.py --smoke           # a few seconds: d 32, n 256, k 8, 12 steps
    python bench/sae.py --n 16384 --batch 2048 --steps 50 --aux-coef 0
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import device_name, sync  # noqa: E402  (also puts the library, scripts/, on sys.path)
from sae_peers import CLASSES, NAMES, Settings, available  # noqa: E402

#: size -> d, n, k, batch, timed steps, warm-up steps
SIZES = {"gpu": (1280, 81920, 32, 8192, 200, 5), "cpu": (128, 1024, 16, 256, 400, 5),
         "smoke": (32, 256, 8, 256, 12, 2)}
POOL_BATCHES = 64  # distinct training batches, cycled
SETS = ("activations", "planted")


# ---- data ---------------------------------------------------------------------------------------------------------
def _sparse_sum(which: torch.Tensor, weights: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """sum_j weights[i, j] * atoms[which[i, j]]: (m, d), from which, weights (m, j) and atoms (A, d)."""
    return F.embedding_bag(which, atoms, per_sample_weights=weights, mode="sum")


def planted(m: int, d: int, n_atoms: int, k_true: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors (m, d), atoms (n_atoms, d)): sums of k_true unit atoms with weights in [0.5, 1.5], plus noise of norm
    about 0.1 and an offset of norm 4. The atoms and the offset depend on ``seed // 2`` only, so that seeds 2s and
    2s + 1 draw train and held-out vectors of the same dictionary."""
    g = torch.Generator(device=device).manual_seed(seed // 2)
    atoms = F.normalize(torch.randn(n_atoms, d, generator=g, device=device), dim=1)
    offset = 4 * F.normalize(torch.randn(d, generator=g, device=device), dim=0)
    g.manual_seed(seed)
    which = torch.randint(0, n_atoms, (m, k_true), generator=g, device=device)
    weights = 0.5 + torch.rand(m, k_true, generator=g, device=device)
    noise = 0.1 / d ** 0.5 * torch.randn(m, d, generator=g, device=device)
    return _sparse_sum(which, weights, atoms) + noise + offset, atoms


def activation_like(m: int, d: int, k_mean: int, seed: int, device) -> torch.Tensor:
    """(m, d) vectors with a common offset, an anisotropic background and heavy-tailed sparse features (module
    docstring); the structure depends on ``seed // 2`` only (see ``planted``)."""
    g = torch.Generator(device=device).manual_seed(seed // 2)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, device=device))
    mix = basis * torch.arange(1, d + 1, device=device).pow(-0.5)  # column i scaled by i^-1/2
    n_features = 4 * d
    features = F.normalize(torch.randn(n_features, d, generator=g, device=device) @ mix.T, dim=1)
    zipf = torch.arange(1, n_features + 1, device=device, dtype=torch.float).pow(-1.0)
    cdf = (zipf / zipf.sum()).cumsum(0)
    offset_dir = F.normalize(torch.randn(d, generator=g, device=device), dim=0)

    def draw(count: int) -> torch.Tensor:
        which = torch.searchsorted(cdf, torch.rand(count, k_mean, generator=g, device=device))
        magnitudes = torch.exp(0.75 * torch.randn(count, k_mean, generator=g, device=device))
        background = 0.5 * torch.randn(count, d, generator=g, device=device) @ mix.T
        return _sparse_sum(which.clamp_max(n_features - 1), magnitudes, features) + background

    offset = 3 * draw(4096).std(0).norm() * offset_dir  # from the structure's seed: the same for every draw
    g.manual_seed(seed)
    return draw(m) + offset


def data_set(name: str, m: int, d: int, k: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(vectors (m, d), true atoms or None) of data set ``name``, k / 2 features per vector."""
    if name == "planted":
        return planted(m, d, 4 * d, max(1, k // 2), seed, device)
    return activation_like(m, d, max(1, k // 2), seed, device), None


# ---- evaluation ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def held_out_scores(model, x: torch.Tensor, n: int, batch: int) -> tuple[float, float]:
    """(FVU, dead fraction) of a trained SAE on the held-out vectors x (m, d), in batches."""
    err, fired = 0.0, torch.zeros(n, dtype=torch.bool, device=x.device)
    for a in range(0, len(x), batch):
        x_hat, hit = model.reconstruct(x[a:a + batch])
        err += float((x[a:a + batch] - x_hat).pow(2).sum())
        fired |= hit
    total = float((x - x.mean(0)).pow(2).sum())
    return err / total, float((~fired).float().mean())


@torch.no_grad()
def mean_best_cosine(atoms: torch.Tensor, decoder: torch.Tensor, chunk: int = 1024) -> float:
    """Mean over the true atoms (A, d) of the largest cosine with a normalised decoder row (n, d)."""
    rows = F.normalize(decoder.float(), dim=1)
    best = [(F.normalize(a, dim=1) @ rows.T).max(1).values for a in atoms.float().split(chunk)]
    return float(torch.cat(best).mean())


@dataclass
class Result:
    steps_per_s: float
    fvu: float
    dead: float
    best_cosine: float | None
    seconds: float  # the whole run: set-up, all steps, evaluation


def run_one(name: str, settings: Settings, batches: list, held_out: torch.Tensor, atoms, warmup: int,
            batch: int) -> Result:
    """Train one SAE on ``batches`` (the first ``warmup`` untimed) and score it."""
    start = time.perf_counter()
    model = CLASSES[name](settings, torch.cat(batches[:16])[:16384])
    model.train(batches[:warmup])
    sync(settings.device)
    t0 = time.perf_counter()
    model.train(batches[warmup:])
    sync(settings.device)
    rate = (len(batches) - warmup) / (time.perf_counter() - t0)
    fvu, dead = held_out_scores(model, held_out, settings.n, batch)
    cosine = mean_best_cosine(atoms, model.decoder_rows()) if atoms is not None else None
    return Result(rate, fvu, dead, cosine, time.perf_counter() - start)


# ---- the table ----------------------------------------------------------------------------------------------------
HEADER = f"{'data':<12} {'sae':<13} {'steps/s':>9} {'FVU':>8} {'dead':>7} {'best cos':>9} {'s':>7}"


def row(data: str, name: str, r: Result | str) -> str:
    if isinstance(r, str):
        return f"{data:<12} {name:<13} skipped: {r}"
    cosine = f"{r.best_cosine:>9.3f}" if r.best_cosine is not None else f"{'-':>9}"
    return f"{data:<12} {name:<13} {r.steps_per_s:>9.2f} {r.fvu:>8.4f} {r.dead:>7.1%} {cosine} {r.seconds:>7.1f}"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="a run of a few seconds (d 32, n 256, k 8, 12 steps)")
    ap.add_argument("--d", type=int, help="input width (default 1280 on a GPU, 128 on the CPU)")
    ap.add_argument("--n", type=int, help="latents (default 81,920 on a GPU, 1024 on the CPU)")
    ap.add_argument("--k", type=int, help="active latents per vector (default 32 on a GPU, 16 on the CPU)")
    ap.add_argument("--batch", type=int, help="vectors per step (default 8192 on a GPU, 256 on the CPU)")
    ap.add_argument("--steps", type=int, help="timed steps (default 200 on a GPU, 400 on the CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps before them (default 5)")
    ap.add_argument("--lr", type=float, help="Adam lr of all three (default 2e-4 / sqrt(n / 2^14))")
    ap.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK weight; 0 = AuxK off (default 1/32)")
    ap.add_argument("--dead-after", type=int, help="vectors without firing that make a latent dead for AuxK "
                                                   "(default 10 batches)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--saes", nargs="+", choices=NAMES, default=list(NAMES))
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    """Prints the table, a row as soon as it is measured (a run cut short keeps its first rows); returns
    {(data set, SAE): Result or the reason it was skipped}."""
    from difflens.sae.train import default_lr

    args = parse_args(argv)
    device = torch.device(args.device)
    size = "smoke" if args.smoke else "gpu" if device.type == "cuda" else "cpu"
    defaults = dict(zip(("d", "n", "k", "batch", "steps", "warmup"), SIZES[size]))
    d, n, k, batch, steps, warmup = (value if getattr(args, key) is None else getattr(args, key)
                                     for key, value in defaults.items())
    settings = Settings(d=d, n=n, k=k, lr=args.lr or default_lr(n), aux_coef=args.aux_coef,
                        dead_after=args.dead_after or 10 * batch, seed=args.seed, device=device)
    aux = f"AuxK {settings.aux_coef:g}, dead after {settings.dead_after} vectors" if settings.aux_coef else "AuxK off"
    print(f"k-SAE benchmark: {device_name(device)}, torch {torch.__version__}, d {d}, n {n}, k {k}, batch {batch}, lr "
          f"{settings.lr:.2e} (Adam), {warmup} + {steps} steps, {aux}, seed {args.seed}", flush=True)
    skipped = available(device, args.saes)
    results = {}
    print("\n" + HEADER, flush=True)
    for data in args.sets:
        total = warmup + steps
        pool, atoms = data_set(data, batch * min(total, POOL_BATCHES), d, k, 2 * args.seed, device)
        held_out, _ = data_set(data, max(8 * batch, 8192), d, k, 2 * args.seed + 1, device)
        batches = [pool[(i % POOL_BATCHES) * batch:(i % POOL_BATCHES + 1) * batch] for i in range(total)]
        for name in args.saes:
            if skipped[name] is None:
                results[data, name] = run_one(name, settings, batches, held_out, atoms, warmup, batch)
            else:
                results[data, name] = "not installed or failed to import: " + skipped[name]
            print(row(data, name, results[data, name]), flush=True)
    return results


if __name__ == "__main__":
    main()
