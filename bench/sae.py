"""Benchmark: difflens' k-SAE training step against a reference written the way the Revelio code does it, in one run.

Both train on the same synthetic vectors (sums of k_true random unit directions with positive weights, plus an
offset), from the same seed, for the same number of steps:

* reference: fp32; z = scatter of the TopK values into a dense (b, n) code (no ReLU); x_hat = z @ W_dec + b_pre, a
  dense decode; b_pre from the data mean; Adam; unit-norm decoder rows with the parallel gradient removed; no AuxK;
* difflens (``difflens.sae``): bf16 autocast encoder on a GPU, the code kept sparse and decoded by gathering the k
  active decoder rows, a backward pass through the chosen entries only, b_pre from the geometric median, AuxK on.

Prints steps/s of both and their ratio, and the fraction of latents that never fire on 16 batches of held-out
vectors after the same number of steps.

    python bench/sae.py                           # GPU: d 1280, n 81,920, k 32, batch 8192; CPU: n 8192, batch 1024
    python bench/sae.py --n 16384 --batch 2048 --steps 50
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from difflens.sae.model import KSAE, SAEConfig  # noqa: E402
from difflens.sae.train import SAETrainer, SAETrainSettings  # noqa: E402


class ReferenceSAE(nn.Module):
    """The Revelio layout: dense TopK scatter, dense decode, fp32."""

    def __init__(self, d: int, n: int, k: int):
        super().__init__()
        self.k = k
        self.encoder = nn.Linear(d, n)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())
        self.b_pre = nn.Parameter(torch.zeros(d))
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))

    def code(self, x):
        pre = self.encoder(x - self.b_pre)
        values, indices = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, indices, values)

    def forward(self, x):
        return self.code(x) @ self.W_dec + self.b_pre


def reference_step(model: ReferenceSAE, opt, x):
    loss = (model(x) - x).pow(2).sum(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        g = model.W_dec.grad
        g.sub_((g * model.W_dec).sum(1, keepdim=True) * model.W_dec)
    opt.step()
    with torch.no_grad():
        model.W_dec.div_(model.W_dec.norm(dim=1, keepdim=True))
    return loss.detach()


def synthetic(n_vectors: int, d: int, atoms: int, k_true: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g, device=device), dim=1)
    which = torch.randint(0, atoms, (n_vectors, k_true), generator=g, device=device)
    weights = 0.5 + torch.rand(n_vectors, k_true, generator=g, device=device)
    return torch.einsum("bk,bkd->bd", weights, dictionary[which]) + 0.1


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def dead_fraction(fires_of, held_out: torch.Tensor, n: int, batch: int) -> float:
    fired = torch.zeros(n, dtype=torch.bool, device=held_out.device)
    for a in range(0, len(held_out), batch):
        fired |= fires_of(held_out[a:a + batch])
    return float((~fired).float().mean())


def timed(step, batches, warmup: int, device) -> float:
    for xb in batches[:warmup]:
        step(xb)
    sync(device)
    t0 = time.perf_counter()
    for xb in batches[warmup:]:
        step(xb)
    sync(device)
    return (len(batches) - warmup) / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--n", type=int, help="latents (default 81,920 on a GPU, 8192 on the CPU)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, help="vectors per step (default 8192 on a GPU, 1024 on the CPU)")
    ap.add_argument("--steps", type=int, help="timed steps (default 200 on a GPU, 20 on the CPU)")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n = args.n or (81920 if gpu else 8192)
    batch = args.batch or (8192 if gpu else 1024)
    steps = args.steps or (200 if gpu else 20)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"difflens k-SAE benchmark: {name}, torch {torch.__version__}, d {args.d}, n {n}, k {args.k}, batch {batch}, "
          f"{steps} timed steps after {args.warmup} warm-up steps", flush=True)
    total = args.warmup + steps
    data = synthetic(batch * min(total, 64), args.d, atoms=4 * args.d, k_true=16, seed=0, device=device)
    held_out = synthetic(batch * 16, args.d, atoms=4 * args.d, k_true=16, seed=0, device=device)[batch * 8:]
    batches = [data[(i % 64) * batch:(i % 64 + 1) * batch] for i in range(total)]

    torch.manual_seed(0)
    ref = ReferenceSAE(args.d, n, args.k).to(device)
    with torch.no_grad():
        ref.b_pre.copy_(data[:16384].mean(0))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=2e-4)
    ref_rate = timed(lambda xb: reference_step(ref, ref_opt, xb), batches, args.warmup, device)
    ref_dead = dead_fraction(lambda xb: (ref.code(xb) != 0).any(0), held_out, n, batch)
    print(f"reference: {ref_rate:.2f} steps/s", flush=True)
    del ref, ref_opt

    torch.manual_seed(0)
    sae = KSAE(SAEConfig(d=args.d, n_latents=n, k=args.k))
    sae.init_from_sample(data[:16384].float().cpu())
    trainer = SAETrainer(sae.to(device).train(), SAETrainSettings(dead_after=batch * 10))
    ours_rate = timed(trainer.step, batches, args.warmup, device)
    sae.eval()

    def fires(xb):
        code = sae.encode(xb)
        hit = torch.zeros(n, dtype=torch.bool, device=device)
        hit[code.indices[code.values > 0]] = True
        return hit

    ours_dead = dead_fraction(fires, held_out, n, batch)
    print(f"difflens: {ours_rate:.2f} steps/s", flush=True)
    print(f"\n{'':10} {'steps/s':>9} {'dead after ' + str(total) + ' steps':>22}")
    print(f"{'reference':10} {ref_rate:>9.2f} {ref_dead:>22.1%}")
    print(f"{'difflens':10} {ours_rate:>9.2f} {ours_dead:>22.1%}")
    print(f"ratio {ours_rate / ref_rate:.1f}x" + ("  (target on a GPU: >= 10x)" if gpu else ""))
    return ref_rate, ours_rate


if __name__ == "__main__":
    main()
