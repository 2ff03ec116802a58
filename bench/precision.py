"""Benchmark: what bf16 changes in the numbers the pipeline reports, against fp32 on the same inputs, in one run.

Each model is built twice from the same weights, once in fp32 and once in bf16, and both copies get the same latents,
the same (log-SNR, noise) draws and the same timestep noise:

* the shipped **shapes-world model** (trained weights): held-out two-object scenes with their true caption and its
  relation swap; i^s and i^o of both captions (stratified draws, the demo's proposal loc 0, scale 2, clip 3), and
  the ``up_blocks.1`` maps at t = 25 under the empty prompt (what Diff-C trains on; their spatial means are what the
  probes and SAEs read);
* the **SD 2.1-base UNet** (paper scale: 865M parameters, 512 px; random weights and random text states, no
  download): i^s and i^o of 2 captions for random latents at the paper's proposal (loc 1, scale 2, clip 3), and the
  ``up_blocks.1`` maps at t = 25.

Printed per model and quantity: the relative error ||bf16 - fp32|| / ||fp32||, the Pearson correlation of bf16 with
fp32 over every value, and for the shapes model's i^s and i^o the share of scenes whose pick (true caption or swap)
is the same in both precisions, with each precision's accuracy.

    python bench/precision.py                 # GPU: 32 scenes x 16 draws; SD 2.1-base 512 px, 4 items x 100 draws
    python bench/precision.py --smoke         # CPU, 1 thread, smoke-scale UNet, 4 scenes x 2 draws (the tests')
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from architectures import ROOT, sd21_denoiser_model, text_width
from harness import device_name, sync, write_json
from shapes_checkpoint import scene_latents

from difflens.data.shapes import choice_prompts, heldout_scenes
from difflens.info.estimators import LogSNRSampler, information_scores
from difflens.models import load_model

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYER, TIMESTEP = "up_blocks.1", 25


def agreement(fp32: np.ndarray, bf16: np.ndarray) -> dict:
    """How close ``bf16`` is to ``fp32`` (same shape): relative L2 error and Pearson correlation over all values."""
    a, b = np.asarray(fp32, np.float64).ravel(), np.asarray(bf16, np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two arrays of one shape with >= 2 values, got {a.shape} and {b.shape}")
    norm = np.linalg.norm(a)
    if norm == 0:
        raise ValueError("the fp32 values are all zero: no relative error")
    return {"rel_err": float(np.linalg.norm(b - a) / norm), "corr": float(np.corrcoef(a, b)[0, 1])}


def layer_maps(model, latents: torch.Tensor, cond: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``LAYER``'s maps (B, C, H, W), float32, at ``TIMESTEP`` on seeded noise (the same for every model)."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    x_t = model.add_noise(latents, noise, torch.full((len(latents),), TIMESTEP))
    return model.capture(x_t, TIMESTEP, cond.expand(len(latents), *cond.shape[1:]), [LAYER])[LAYER].float().cpu()


def measure(model, latents: torch.Tensor, prompts: list[list[str]], draws: int, sampler: LogSNRSampler,
            keys: list, empty: torch.Tensor) -> dict:
    """i^s and i^o (B, captions) of each latent with its prompts, and ``LAYER``'s maps under the ``empty`` condition."""
    sc = information_scores(model, latents, prompts, n_draws=draws, sampler=sampler, sample_keys=keys)
    return {"i_s": sc.i_s, "i_o": sc.i_o, "maps": layer_maps(model, latents, empty).numpy()}


def compare(got: dict, picks: bool) -> dict:
    """``agreement`` of bf16 with fp32 for each quantity of ``measure``; with ``picks`` (captions [true, negative])
    also the share of items whose i^s / i^o pick is the same in both, and each precision's accuracy."""
    out = {q: agreement(got["fp32"][q], got["bf16"][q]) for q in ("i_s", "i_o", "maps")}
    for q in ("i_s", "i_o") if picks else ():
        pick = {name: got[name][q][:, 0] > got[name][q][:, 1] for name in PRECISIONS}
        out[q].update(same_pick=float(np.mean(pick["fp32"] == pick["bf16"])),
                      **{f"accuracy_{name}": float(np.mean(p)) for name, p in pick.items()})
    return out


def shapes_precision(scenes: int, draws: int, device: torch.device) -> dict:
    """True caption vs relation swap on held-out scenes of the shipped shapes model, fp32 vs bf16."""
    held = heldout_scenes(scenes)
    prompts = choice_prompts(held, "relation")
    models = {name: load_model("shapes", str(ROOT / "resources" / "shapes_model"), dtype=dtype, device=device)
              for name, dtype in PRECISIONS.items()}
    latents = scene_latents(models["fp32"], held)
    sampler = LogSNRSampler(0.0, 2.0, 3.0, True)
    got = {name: measure(m, latents, prompts, draws, sampler, [i for i, _ in held], m.encode_text([""]))
           for name, m in models.items()}
    return {"model": "shapes (shipped)", "items": scenes, "draws": draws, **compare(got, picks=True)}


def sd21_precision(size: int, scale: str, items: int, draws: int, device: torch.device) -> dict:
    """2 random captions on random latents of a random-weight SD 2.1-base UNet, fp32 vs bf16."""
    fp32 = sd21_denoiser_model(size, scale, torch.float32, device)
    models = {"fp32": fp32,
              "bf16": sd21_denoiser_model(size, scale, torch.bfloat16, device, unet=copy.deepcopy(fp32.unet))}
    gen = torch.Generator().manual_seed(0)
    states = {p: torch.randn(77, text_width(fp32.unet), generator=gen) for p in ("", "caption a", "caption b")}
    latents = torch.randn((items, 4, size // 8, size // 8), generator=gen)
    for model in models.values():
        for p, state in states.items():
            model.set_condition(p, state)
    got = {name: measure(m, latents, [["caption a", "caption b"]] * items, draws, LogSNRSampler(1.0, 2.0, 3.0),
                         list(range(items)), states[""][None]) for name, m in models.items()}
    return {"model": f"sd21-base ({scale} scale, random weights)", "items": items, "draws": draws, "size": size,
            **compare(got, picks=False)}


def print_table(results: list[dict]) -> None:
    print(f"\n{'model':<40} {'quantity':<16} {'rel. error':>10} {'corr.':>8} {'same pick':>9} {'acc. fp32':>9} "
          f"{'acc. bf16':>9}")
    for r in results:
        for q, label in (("i_s", "i^s totals"), ("i_o", "i^o totals"), ("maps", f"{LAYER} maps")):
            m = r[q]
            extra = (f"{m['same_pick']:>9.3f} {m['accuracy_fp32']:>9.3f} {m['accuracy_bf16']:>9.3f}"
                     if "same_pick" in m else f"{'':>9} {'':>9} {'':>9}")
            print(f"{r['model']:<40} {label:<16} {m['rel_err']:>10.4f} {m['corr']:>8.4f} {extra}".rstrip())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scenes", type=int, default=32, help="held-out shapes-world scenes")
    ap.add_argument("--shapes-draws", type=int, default=16)
    ap.add_argument("--size", type=int, help="SD image side in px (default 512 on a GPU, 128 on the CPU)")
    ap.add_argument("--items", type=int, default=4, help="random SD latents scored")
    ap.add_argument("--draws", type=int, help="SD draws per item (default 100 on a GPU, 10 on the CPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--smoke", action="store_true", help="CPU, 1 thread, smoke-scale UNet at 64 px, 2 items x 2 "
                    "draws, 4 scenes x 2 draws: checks that the benchmark runs (seconds), measures nothing")
    ap.add_argument("--json", help="also write the measured numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.scenes, args.shapes_draws, args.size, args.items, args.draws = "cpu", 4, 2, 64, 2, 2
        args.threads = args.threads or 1
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.size = args.size or (512 if gpu else 128)
    args.draws = args.draws or (100 if gpu else 10)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = "smoke" if args.smoke else "paper"
    print(f"bf16 vs fp32 on the same inputs: {device_name(device)}, torch {torch.__version__}; shapes model "
          f"{args.scenes} scenes x {args.shapes_draws} draws; SD 2.1-base UNet ({scale} scale) {args.size} px, "
          f"{args.items} items x {args.draws} draws", flush=True)
    t0 = time.perf_counter()
    results = [shapes_precision(args.scenes, args.shapes_draws, device)]
    results.append(sd21_precision(args.size, scale, args.items, args.draws, device))
    sync(device)
    print_table(results)
    print(f"\n({time.perf_counter() - t0:.1f} s; the SD UNet has random weights and random text states: its rows show "
          f"bf16's rounding in an SD-shaped network, not a trained SD's sensitivity)")
    write_json(args.json, {"device": device_name(device), "scale": scale, "results": results})
    return results


if __name__ == "__main__":
    main()
