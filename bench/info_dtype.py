"""Benchmark (not run by ``make test``): how far bfloat16 moves i^s and i^o from float32 on the CPU, the
``models.<name>.dtype`` choice (``auto`` is bfloat16 on a GPU; configs/infodecomp.yaml sets float32, the public code's).

Each model is loaded twice through the model layer from one folder, ``dtype: float32`` and ``dtype: bfloat16`` (its
denoiser, text encoder and VAE in that dtype), and both copies score the same images with the same captions at the
same independent (log-SNR, noise) draws (``information_scores`` seeds them by item, whatever the dtype):

* the shipped **shapes-world model**: held-out two-object scenes x [true caption, relation swap], the proposal of
  config.yaml (loc 0, scale 2, clip 3); its "VAE" is a reshape, so both copies see the same latents;
* a **tiny random-weight SD** (``build_tiny_sd`` of tests/tiny_pipelines.py: 16 px, UNet 32/64, 2-layer CLIP): the
  same scenes at 16 px with the same captions, the paper's proposal (loc 1, scale 2, clip 3); scored once on the fp32
  VAE's latents for both copies (``same latents``: the denoiser's precision alone) and once on each copy's own
  latents (``own latents``: what a bf16 job computes).

Printed per model and quantity: the mean bf16 - fp32 (a bias) and mean |bf16 - fp32| (nats), the latter over the
mean |fp32| (relative), the L2 relative error and Pearson correlation over every (scene, caption) value
(``precision.agreement``), the mean fp32 Monte-Carlo standard error for scale, and the share of scenes whose pick
(caption over swap) is the same in both dtypes.

    python bench/info_dtype.py                       # 16 scenes x 32 draws, 2 threads: about 15 s
    python bench/info_dtype.py --draws 100           # the paper's draws per image: about 35 s
    python bench/info_dtype.py --scenes 4 --draws 4  # seconds
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import torch

from harness import ROOT, write_json  # also puts the library (scripts/) on sys.path
from precision import PRECISIONS, agreement
from shapes_checkpoint import scene_latents

sys.path.insert(0, str(ROOT / "tests"))

from difflens.data.shapes import choice_prompts, heldout_scenes  # noqa: E402
from difflens.info.estimators import LogSNRSampler, information_scores  # noqa: E402
from difflens.models import load_model  # noqa: E402
from tiny_pipelines import build_tiny_sd  # noqa: E402

DTYPES = {name: str(dtype).replace("torch.", "") for name, dtype in PRECISIONS.items()}  # fp32 / bf16 -> config


def difference(scores: dict) -> dict:
    """bf16 against fp32 for i^s and i^o ((scenes, captions) arrays of ``Scores``)."""
    out = {}
    for q in ("i_s", "i_o"):
        a, b = (np.asarray(getattr(scores[name], q), np.float64) for name in ("fp32", "bf16"))
        mad = float(np.abs(b - a).mean())
        pick = {name: getattr(scores[name], q)[:, 0] > getattr(scores[name], q)[:, 1] for name in scores}
        out[q] = {"mean_diff": float((b - a).mean()), "mean_abs_diff": mad,
                  "rel_mean_abs_diff": mad / float(np.abs(a).mean()), **agreement(a, b),
                  "mean_fp32": float(a.mean()), "fp32_mc_se": float(getattr(scores["fp32"], f"{q}_se").mean()),
                  "same_pick": float(np.mean(pick["fp32"] == pick["bf16"]))}
    return out


def compare(label: str, source: str, kind: str, scenes, draws: int, sampler: LogSNRSampler,
            own_latents: bool) -> list[dict]:
    """Rows of ``difference`` for the model at ``source``: on the fp32 copy's latents and, with ``own_latents``, on
    each copy's own."""
    models = {name: load_model(kind, source, dtype=dtype, device="cpu") for name, dtype in DTYPES.items()}
    prompts = choice_prompts(scenes, "relation")
    keys = [i for i, _ in scenes]
    latents = {name: scene_latents(m, scenes).float() for name, m in models.items()}
    runs = {"same latents": {name: latents["fp32"] for name in models}}
    if own_latents:
        runs["own latents"] = latents
    rows = []
    for run, lat in runs.items():
        t0 = time.perf_counter()
        scores = {name: information_scores(m, lat[name], prompts, n_draws=draws, sampler=sampler, sample_keys=keys)
                  for name, m in models.items()}
        rows.append({"model": label, "latents": run, "seconds": round(time.perf_counter() - t0, 1),
                     **difference(scores)})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<22} {'latents':<13} {'q':<4} {'mean fp32':>9} {'mean d':>8} {'mean|d|':>8} {'rel.':>7} "
          f"{'L2 rel.':>7} "
          f"{'corr.':>7} {'MC s.e.':>8} {'same pick':>9}")
    for r in rows:
        for q in ("i_s", "i_o"):
            m = r[q]
            print(f"{r['model']:<22} {r['latents']:<13} {q:<4} {m['mean_fp32']:>9.4f} {m['mean_diff']:>8.4f} "
                  f"{m['mean_abs_diff']:>8.4f} "
                  f"{m['rel_mean_abs_diff']:>7.4f} {m['rel_err']:>7.4f} {m['corr']:>7.4f} {m['fp32_mc_se']:>8.4f} "
                  f"{m['same_pick']:>9.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=16, help="held-out shapes-world scenes (2 captions each)")
    ap.add_argument("--draws", type=int, default=32, help="(log-SNR, noise) draws per scene")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenes = heldout_scenes(args.scenes)
    print(f"bf16 vs fp32 on the CPU (torch {torch.__version__}, {args.threads} threads): {len(scenes)} scenes x 2 "
          f"captions x {args.draws} draws", flush=True)
    rows = compare("shapes (shipped)", str(ROOT / "resources" / "shapes_model"), "shapes", scenes, args.draws,
                   LogSNRSampler(0.0, 2.0, 3.0), own_latents=False)
    with tempfile.TemporaryDirectory() as tmp:
        rows += compare("tiny SD (random)", str(build_tiny_sd(f"{tmp}/tiny-sd")), "sd", scenes, args.draws,
                        LogSNRSampler(1.0, 2.0, 3.0), own_latents=True)
    print_table(rows)
    print("\n(mean d, mean|d|: mean bf16 - fp32 and mean |bf16 - fp32|, nats; rel.: mean|d| over mean |fp32|; MC "
          "s.e.: the fp32 estimate's mean "
          "standard error over draws; same pick: scenes where both dtypes prefer the same caption)")
    write_json(args.json, {"scenes": len(scenes), "draws": args.draws, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
