"""Benchmark: ARO scoring by difflens' estimators against a reference laid out like the public Info-Decomp code,
and accuracy against draws for the plain and the stratified sampler on the shapes world, in one run.

Part 1 (cost per item): the SD 2.1-base UNet (865M parameters; block widths 320/640/1280/1280, cross-attention 1024,
linear projections, head dims 5/10/20/20), random weights, no download; text states are fixed random tensors, so
only the denoiser is timed. One VG-style item = an image and 2 captions:

* reference: fp32; for each caption, ``draws`` (log-SNR, noise) pairs, the empty prompt recomputed for that caption
  (2 x draws UNet rows per caption), one item at a time, a batch per caption;
* difflens: ``info.estimators.score_item``: the 3 prompts (empty + 2 captions) at the same draws in one batch of
  3 x draws rows (chunks of ``--batch``), bf16 weights on a GPU (fp32 on a CPU).

Both use the same number of draws; it prints items/s of both and the ratio.

Part 2 (shapes world, shipped model): i^s and i^o accuracy of the true caption against the relation swap, the
attribute swap and 4 word-order shuffles, at 4 / 8 / 16 / 32 draws, plain vs stratified sampler.

    python bench/infodecomp.py                    # GPU: 512 px, 100 draws, 8 items; CPU: 128 px, 10 draws, 2 items
    python bench/infodecomp.py --size 256 --draws 50 --items 4 --shapes-images 48
    python bench/infodecomp.py --smoke            # smoke-scale UNet, 2 draws, 1 item; 4 shapes images at 2 draws
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from architectures import ROOT, sd21_denoiser_model, text_width
from harness import device_name, sync, write_json

from difflens.info.estimators import LogSNRSampler, score_item
from difflens.models.base import nearest_timestep


def reference_item(unet, x0, conds, empty, draws, sampler, log_snr, gen, device):
    """The public code's layout: per caption, ``draws`` rows with the caption and ``draws`` with the empty prompt
    (recomputed for every caption); fp32; returns i^o per caption (nats)."""
    out = []
    for cond in conds:
        a, w = sampler.draw(draws, gen)
        t = nearest_timestep(a, log_snr)
        eps = torch.randn((draws, *x0.shape), generator=gen)
        at = a.to(torch.float32).view(-1, 1, 1, 1)
        x = (torch.sigmoid(at).sqrt() * x0 + torch.sigmoid(-at).sqrt() * eps).to(device)
        with torch.no_grad():
            e_c = unet(x, t.to(device), cond.expand(draws, -1, -1).to(device)).sample
            e_u = unet(x, t.to(device), empty.expand(draws, -1, -1).to(device)).sample
        gap = ((e_c - e_u) ** 2).flatten(1).sum(1).double().cpu()
        out.append(float((0.5 * w * gap).mean()))
    return out


def cost_per_item(size: int, draws: int, items: int, batch: int, device: torch.device, scale: str) -> dict:
    """Seconds per item of the reference layout and of difflens, at equal draws (see the module doc)."""
    lat = size // 8
    sampler = LogSNRSampler(1.0, 2.0, 3.0)
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ref = sd21_denoiser_model(size, scale, torch.float32, device)
    gen = torch.Generator().manual_seed(0)
    states = {p: torch.randn(77, text_width(ref.unet), generator=gen) for p in ("", "caption a", "caption b")}
    x0s = torch.randn((items, 4, lat, lat), generator=gen)
    print(f"SD 2.1-base UNet (random weights, {scale} scale), {size} px (latents 4 x {lat} x {lat}), {draws} draws, "
          f"{items} items of 2 captions, on {device_name(device)}")
    reference_item(ref.unet, x0s[0], [states["caption a"][None]], states[""][None], 2, sampler, ref.log_snr, gen,
                   device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for x0 in x0s:
        reference_item(ref.unet, x0, [states["caption a"][None], states["caption b"][None]], states[""][None], draws,
                       sampler, ref.log_snr, gen, device)
    sync(device)
    t_ref = (time.perf_counter() - t0) / items
    del ref
    fast = sd21_denoiser_model(size, scale, fast_dtype, device)
    for p, s in states.items():
        fast.set_condition(p, s)
    pairs = [("caption a", ""), ("caption b", "")]
    score_item(fast, x0s[0], pairs, n_draws=2, sampler=sampler, seed=0, item="warm-up", batch_size=batch)
    sync(device)
    t0 = time.perf_counter()
    for k, x0 in enumerate(x0s):
        score_item(fast, x0, pairs, n_draws=draws, sampler=sampler, seed=0, item=k, batch_size=batch)
    sync(device)
    t_fast = (time.perf_counter() - t0) / items
    print(f"reference (fp32, {4 * draws} UNet rows per item, one batch per caption and prompt): {t_ref:.3f} s/item = "
          f"{1 / t_ref:.3f} items/s")
    print(f"difflens ({str(fast_dtype).split('.')[-1]}, {3 * draws} rows per item in batches of {batch}): "
          f"{t_fast:.3f} s/item = {1 / t_fast:.3f} items/s")
    print(f"ratio at equal draws: {t_ref / t_fast:.2f}x (target on a GPU: >= 4x)")
    return {"device": device_name(device), "scale": scale, "size": size, "draws": draws, "items": items,
            "captions": 2, "reference_s_per_item": t_ref, "reference_rows_per_item": 4 * draws,
            "difflens_s_per_item": t_fast, "difflens_rows_per_item": 3 * draws,
            "difflens_dtype": str(fast_dtype).split(".")[-1]}


def sampler_accuracy(n_images: int, counts: list[int], world: int = 1000) -> list[dict]:
    """Share of shapes-world items where the true caption wins, per draw count, sampler, kind and score, on the
    first ``n_images`` test images of a ``world``-image shapes world (at least 12 x n_images)."""
    import pandas as pd

    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.info.aro import item_outcomes, score_image_rows, select_items
    from difflens.info.inputs import encode_samples
    from difflens.models import load_model

    model = load_model("shapes", str(ROOT / "resources" / "shapes_model"), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), ShapesConfig(n_images=max(world, 12 * n_images)), progress=False)
        ds = Dataset.load(tmp)
        rows = select_items(ds.aro, ds.samples, "test", n_images, ds.name)
        latents = dict(zip(sorted(rows["sample_id"].unique()),
                           encode_samples(model, ds, sorted(rows["sample_id"].unique()))))
        print(f"\nshapes world, shipped model, {len(latents)} test images (relation swap, attribute swap, 4 word-order "
              f"shuffles each); share of items where the true caption wins:")
        kinds = ("relation", "attribute", "order")
        print(f"{'draws':>5} {'sampler':>10} " + " ".join(f"{k + ' ' + s:>16}" for k in kinds for s in ("i_s", "i_o")))
        table = []
        for n in counts:
            for strat in (False, True):
                sampler = LogSNRSampler(0.0, 2.0, 3.0, strat)
                t0 = time.perf_counter()
                scores = [score_image_rows(model, latents[sid], g, n_draws=n, sampler=sampler, seed=0, item=sid,
                                           batch_size=256) for sid, g in rows.groupby("sample_id")]

                out = item_outcomes(pd.concat(scores)).groupby(["kind", "score"])["correct"].mean()
                cells = " ".join(f"{out[(k, s)]:>16.3f}" for k in kinds for s in ("i_s", "i_o"))
                print(f"{n:>5} {'stratified' if strat else 'plain':>10} {cells}   ({time.perf_counter() - t0:.0f} s)")
                table.append({"draws": n, "sampler": "stratified" if strat else "plain",
                              **{f"{k} {s}": float(v) for (k, s), v in out.items()}})
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, help="image side in px (default 512 on a GPU, 128 on the CPU)")
    ap.add_argument("--draws", type=int, help="(log-SNR, noise) draws per item (default 100 GPU, 10 CPU)")
    ap.add_argument("--items", type=int, help="items timed (default 8 GPU, 2 CPU)")
    ap.add_argument("--batch", type=int, default=300)
    ap.add_argument("--shapes-images", type=int, default=32)
    ap.add_argument("--shapes-draws", type=int, nargs="+", default=[4, 8, 16, 32], help="draw counts compared")
    ap.add_argument("--shapes-world", type=int, default=1000, help="images of the shapes world they come from")
    ap.add_argument("--skip-shapes", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--smoke", action="store_true", help="smoke-scale UNet on the CPU (1 thread), 64 px, 2 draws, "
                    "1 item; 4 shapes images of a 100-image world at 2 draws: checks that the benchmark runs "
                    "(seconds), measures nothing")
    ap.add_argument("--json", help="also write the measured numbers to this JSON file (for bench/gpu_hours.py)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.size, args.draws, args.items = "cpu", 64, 2, 1
        args.shapes_images, args.shapes_draws, args.shapes_world, args.threads = 4, [2], 100, args.threads or 1
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.size = args.size or (512 if gpu else 128)
    args.draws = args.draws or (100 if gpu else 10)
    args.items = args.items or (8 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    numbers = cost_per_item(args.size, args.draws, args.items, args.batch, device,
                            "smoke" if args.smoke else "paper")
    if not args.skip_shapes:
        numbers["shapes_accuracy"] = sampler_accuracy(args.shapes_images, args.shapes_draws, args.shapes_world)
    write_json(args.json, numbers)
    return numbers


if __name__ == "__main__":
    main()
