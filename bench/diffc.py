"""Benchmark: Diff-C training on features computed on the fly against training on cached maps, in one run.

Builds the SD 1.5 architecture with random weights (bench/architectures.py), writes a small labelled data set, and
runs the pipeline's library code on one layer (up_ft1 = up_blocks.1) at one timestep:

1. ``extract_dataset``: the VAE latents, and the activations with the spatial maps saved (``save_maps``);
2. Diff-C on the **cached** maps read from HDF5 batch by batch (``CachedMaps`` with no in-memory copy, as it reads a
   data set too large for memory), and once more with the maps held in memory;
3. Diff-C **on the fly** (``OnTheFlyMaps``): the denoiser runs inside training on the cached latents, forward stopped
   after the layer; nothing but the latents on disk.

Prints training images/s of each (epochs x train images / training seconds; the time to write the cache is shown
apart), and the disk each needs: latents alone for on the fly, latents + maps for cached, with the maps' size at
512 px per image and for Oxford-IIIT Pet (7,349 images) per (layer, timestep).

    python bench/diffc.py                  # GPU: 512 px, 64 images, width 1024; CPU: 64 px, 16 images, width 64
    python bench/diffc.py --size 256 --images 32 --width 256 --epochs 2
    python bench/diffc.py --smoke          # smoke-scale UNet on the CPU, 10 images, width 8, 1 epoch (the tests')
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from architectures import build_sd15, difflens_model
from extract import make_dataset
from harness import device_name, sync, write_json

from difflens.classify.diffc import DiffCSettings, train_diffc
from difflens.classify.sources import CachedMaps, OnTheFlyMaps
from difflens.extract.dataset import extract_dataset
from difflens.extract.store import FeatureStore

LAYER, TIMESTEP, PETS = "up_blocks.1", 25, 7349
SPLITS = ("train",) * 8 + ("val", "test")


def disk(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def train(source, args, device) -> tuple[float, dict]:
    settings = DiffCSettings(epochs=args.epochs, lr=1e-4, batch_size=args.batch_size, width=args.width, seed=0)
    t0 = time.perf_counter()
    result = train_diffc(source, source.n_classes, settings, device=device, progress=False)
    sync(device)
    return time.perf_counter() - t0, result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, help="image side in px (default 512 on a GPU, 64 on the CPU)")
    ap.add_argument("--images", type=int, help="images in all (80%% train; default 64 GPU, 16 CPU)")
    ap.add_argument("--batch-size", type=int, default=16, help="Diff-C batch (the paper's 16)")
    ap.add_argument("--width", type=int, help="Diff-C width (default 1024 on a GPU, the paper's; 64 on the CPU)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--smoke", action="store_true", help="smoke-scale UNet on the CPU (1 thread), 64 px, 10 images, "
                    "width 8, batch 4, 1 epoch: checks that the benchmark runs (seconds), measures nothing")
    ap.add_argument("--json", help="also write the measured rows to this JSON file (for bench/gpu_hours.py)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.images, args.width, args.batch_size, args.epochs = "cpu", 10, 8, 4, 1
        args.threads = args.threads or 1
    scale = "smoke" if args.smoke else "paper"
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.size = args.size or (512 if gpu else 64)
    args.images = args.images or (64 if gpu else 16)
    args.width = args.width or (1024 if gpu else 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = device_name(device)
    print(f"difflens Diff-C benchmark: {name}, torch {torch.__version__}, SD 1.5 random weights ({scale} scale), "
          f"{args.size} px, {args.images} images, {LAYER} t{TIMESTEP}, width {args.width}, batch {args.batch_size}, "
          f"{args.epochs} epochs", flush=True)
    parts = build_sd15(args.size, scale)
    for k in ("denoiser", "vae", "text_encoder"):
        parts[k].to(device)
    model = difflens_model("sd15", parts, device, torch.bfloat16 if gpu else torch.float32, args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="difflens-bench-diffc-") as tmp:
        root = Path(tmp)
        data = make_dataset(root / "data", args.images, args.size, SPLITS, n_classes=4)
        t0 = time.perf_counter()
        extract_dataset(model, data, root / "results", "sd15", layers=[LAYER], timesteps=[TIMESTEP],
                        batch_size=args.batch_size, save_maps=True, progress=False)
        extract_s = time.perf_counter() - t0
        store = FeatureStore(root / "results")
        latents = disk(store.latent_files("sd15", "bench"))
        maps = disk(store.files("sd15", "bench", LAYER, TIMESTEP))
        sources = {
            "cached, read from HDF5": lambda: CachedMaps(store, "sd15", "bench", LAYER, TIMESTEP, max_bytes=0),
            "cached, held in memory": lambda: CachedMaps(store, "sd15", "bench", LAYER, TIMESTEP),
            "on the fly": lambda: OnTheFlyMaps(store, model, "sd15", "bench", LAYER, TIMESTEP),
        }
        for label, make in sources.items():
            source = make()
            seconds, result = train(source, args, device)
            n = result["n_train"] * args.epochs
            rows.append({"source": label, "images_per_s": n / seconds, "seconds": seconds, "epochs": args.epochs,
                         "disk_bytes": latents if label == "on the fly" else latents + maps,
                         **{k: result[k] for k in ("n_train", "n_val", "n_test")}})
            print(f"{label}: {n} training images in {seconds:.1f} s = {n / seconds:.2f} images/s "
                  f"(maps {source.channels}x{source.map_size[0]}x{source.map_size[1]})", flush=True)
        shape = (source.channels, *source.map_size)
    per_image_512 = 2 * shape[0] * (shape[1] * 512 // args.size) * (shape[2] * 512 // args.size)
    print(f"\nwriting the cache (VAE + denoiser + maps to HDF5): {extract_s:.1f} s for {args.images} images\n")
    print(f"{'source':<24} {'images/s':>9} {'vs cached HDF5':>15} {'disk MB':>9} {'disk / image':>13}")
    for r in rows:
        print(f"{r['source']:<24} {r['images_per_s']:>9.2f} {r['images_per_s'] / rows[0]['images_per_s']:>14.2f}x "
              f"{r['disk_bytes'] / 2 ** 20:>9.2f} {r['disk_bytes'] / args.images / 2 ** 10:>10.1f} kB")
    print(f"\nfloat16 {LAYER} map at 512 px: {per_image_512 / 2 ** 20:.2f} MB per image, "
          f"{per_image_512 * PETS / 2 ** 30:.1f} GB for Oxford-IIIT Pet per (layer, timestep) if cached")
    write_json(args.json, {"device": name, "scale": scale, "size": args.size, "width": args.width,
                           "layer": LAYER, "timestep": TIMESTEP, "extract_s": extract_s, "images": args.images,
                           "rows": rows})
    return rows


if __name__ == "__main__":
    main()
