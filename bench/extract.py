"""Benchmark: difflens activation extraction against a Revelio-style reference, in one run, no download.

Builds the SD 1.5 architecture (and DiT-XL/2) from their public config values with random weights, writes a small
synthetic data set of JPEGs (5:4, so both paths resize and crop), and extracts 4 layers at 1 and at 4 timesteps:

* reference, written the way the Revelio code does it: fp32, for every layer and timestep one full denoiser pass
  with a hook on that layer, the VAE and the text encoder re-run before every pass;
* difflens: ``encode_latents`` (the VAE once, HDF5) + ``extract_activations`` (every layer and timestep of a batch
  from one denoiser batch stopped after the deepest layer; bf16 on a GPU), the library functions the rules call,
  file writing included.

Prints images/s of both, their ratio, and the achieved fraction of the FLOP ceiling: (VAE + T x denoiser up to the
deepest layer) FLOPs per image, counted with torch's FlopCounterMode, x images/s / peak. The peak is the GPU's
dense bf16 figure (table below, or --peak-tflops); on a CPU it is a measured fp32 matmul rate.

    python bench/extract.py                       # GPU: 512 px, 64 images; CPU: 64 px, 2 images
    python bench/extract.py --arch both --size 256 --images 32
    python bench/extract.py --arch both --smoke   # smoke-scale networks on the CPU, seconds (the tests' run)
    python bench/extract.py --arch families --size 1024 --timesteps 1   # SDXL, PixArt, SD3.5-m, FLUX.1 at full size
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from architectures import BUILDERS, difflens_model
from harness import device_name, sync, write_json

from difflens.data.common import Dataset, write_dataset
from difflens.extract.activations import extract_activations
from difflens.extract.latents import encode_latents

TIMESTEPS = {1: [25], 4: [25, 100, 250, 500]}
# dense bf16 tensor-core peaks, TFLOP/s (H100 as in docs/reference.md, section 5; override with --peak-tflops)
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 790.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
TARGETS = {1: 10.0, 4: 20.0}  # ratio targets on an H100; ceiling fraction >= 0.35


# ---- the Revelio-style reference ----------------------------------------------------------------------------------
def reference_preprocess(path: Path, size: int) -> torch.Tensor:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) / 127.5 - 1


def reference_extract(arch: str, parts: dict, paths: list[Path], size: int, timesteps: list[int],
                      batch_size: int, device: torch.device) -> dict:
    """fp32; per layer and timestep: text encoder, VAE, noise, one full denoiser pass with one hook."""
    den, vae, te, tok, sched = (parts[k] for k in ("denoiser", "vae", "text_encoder", "tokenizer", "scheduler"))
    modules = dict(den.named_modules())
    out = {}
    for a in range(0, len(paths), batch_size):
        pixels = torch.stack([reference_preprocess(p, size) for p in paths[a:a + batch_size]]).to(device)
        b = len(pixels)
        for t in timesteps:
            for name, path in parts["layers"].items():
                got = {}
                handle = modules[path].register_forward_hook(
                    lambda _m, _i, o: got.setdefault("x", o[0] if isinstance(o, tuple) else o))
                with torch.no_grad():
                    if arch == "sd15":
                        ids = tok([""] * b, padding="max_length", max_length=77, return_tensors="pt").input_ids
                        cond = te(ids.to(device))[0]
                    latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
                    noise = torch.randn_like(latents)
                    tt = torch.full((b,), t, device=device, dtype=torch.long)
                    x_t = sched.add_noise(latents, noise, tt)
                    if arch == "sd15":
                        den(x_t, tt, encoder_hidden_states=cond)
                    else:
                        den(x_t, timestep=tt, class_labels=torch.full((b,), 1000, device=device))
                handle.remove()
                x = got["x"]
                if x.dim() == 3:  # DiT tokens (B, N, D) -> (B, D, h, w)
                    n = int(x.shape[1] ** 0.5)
                    x = x.transpose(1, 2).reshape(b, -1, n, n)
                out.setdefault((t, name), []).append(x.mean((-2, -1)).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


# ---- the project's path -------------------------------------------------------------------------------------------
def difflens_extract(model, dataset: Dataset, work: Path, layers: list[str], timesteps: list[int], batch_size: int,
                     workers: int) -> None:
    model._text_cache.clear()  # a job encodes its prompt once: count it
    lat = work / "latents.h5"
    encode_latents(model, dataset, lat, batch_size=batch_size, workers=workers, progress=False)
    outs = {(t, layer): work / f"t{t}-{layer}.h5" for t in timesteps for layer in layers}
    extract_activations(model, lat, outs, batch_size=batch_size, progress=False)


def timed_extractions(model, dataset: Dataset, work: Path, arch: str, layers: list[str], args, device):
    """After a one-image warm-up, (timesteps, s per image) of the library's extraction of ``dataset`` at each count
    of ``args.timesteps``, yielded as each finishes (a GPU's peak-memory counter reset before each)."""
    warm = Dataset.load(dataset.root)
    warm.samples = warm.samples.iloc[:1]
    difflens_extract(model, warm, work / f"{arch}-warm", layers, [25], 1, args.workers)  # warm-up
    for n_t in args.timesteps:
        out = work / f"{arch}-t{n_t}"
        out.mkdir()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        difflens_extract(model, dataset, out, layers, TIMESTEPS[n_t], args.batch_size, args.workers)
        sync(device)
        yield n_t, (time.perf_counter() - t0) / len(dataset.samples)


# ---- FLOPs and peaks ----------------------------------------------------------------------------------------------
def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def flops_per_image(model, layers: list[str], size: int) -> tuple[float, float]:
    """(VAE encoder FLOPs, denoiser-up-to-the-deepest-layer FLOPs) for one image at one timestep."""
    px = torch.zeros(1, 3, size, size, device=model.device)
    vae = count_flops(lambda: model.encode_images(px))
    lat = model.encode_images(px)
    cond = model.encode_text([""])
    den = count_flops(lambda: model.capture(lat, 25, cond, layers))
    return vae, den


def peak_flops(device: torch.device, override: float | None, seconds: float = 1.0) -> tuple[float, str]:
    """The device's peak FLOP/s and how it was found: ``override`` (TFLOP/s), the GPU table, or on a CPU an fp32
    1024 x 1024 matmul rate measured for ``seconds``."""
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12, f"{tf:g} TFLOP/s dense bf16 ({key} table)"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    a = torch.randn(1024, 1024)
    a @ a
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        reps += 1
    rate = 2 * 1024 ** 3 * reps / (time.perf_counter() - t0)
    return rate, f"{rate / 1e9:.1f} GFLOP/s (measured CPU fp32 matmul, {torch.get_num_threads()} threads)"


# ---- driver -------------------------------------------------------------------------------------------------------
def make_dataset(root: Path, n: int, size: int, splits: tuple[str, ...] = ("test",), n_classes: int = 1) -> Dataset:
    """``n`` smooth random 5:4 JPEGs; splits and class labels assigned in turn."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "images").mkdir(parents=True)
    classes = [f"thing{c}" for c in range(n_classes)] if n_classes > 1 else ["thing"]
    for i in range(n):
        low = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)  # smooth content, like a photo after JPEG
        Image.fromarray(low).resize((size * 5 // 4, size), Image.BILINEAR).save(root / "images" / f"{i}.jpg",
                                                                                quality=90)
        rows.append({"sample_id": f"img{i:05d}", "split": splits[i % len(splits)], "label": i % n_classes,
                     "label_name": classes[i % n_classes], "image": f"images/{i}.jpg", "caption": ""})
    write_dataset(root, name="bench", source="bench", samples=pd.DataFrame(rows), classes=classes)
    return Dataset.load(root)


def run_arch(arch: str, args, device: torch.device, peak: float, work: Path) -> list[dict]:
    t0 = time.perf_counter()
    parts = BUILDERS[arch](args.size, args.scale)
    for k in ("denoiser", "vae", "text_encoder"):
        if parts[k] is not None:
            parts[k].to(device)
    print(f"[{arch}] built from config values ({args.scale} scale) in {time.perf_counter() - t0:.1f} s", flush=True)
    dataset = make_dataset(work / f"{arch}-data", args.images, args.size)
    paths = [dataset.root / p for p in dataset.samples["image"]]
    rows = []
    # reference first, in fp32 (the adapter below converts the same modules to bf16 in place on a GPU)
    ref_time = {}
    reference_extract(arch, parts, paths[:1], args.size, [25], 1, device)  # warm-up
    for n_t in args.timesteps:
        sync(device)
        t0 = time.perf_counter()
        reference_extract(arch, parts, paths, args.size, TIMESTEPS[n_t], args.batch_size, device)
        sync(device)
        ref_time[n_t] = (time.perf_counter() - t0) / len(paths)
        print(f"[{arch}] reference, {n_t} timestep(s): {ref_time[n_t]:.4f} s/image", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = difflens_model(arch, parts, device, dtype, args.size)
    if args.channels_last:
        for mod in (parts["denoiser"], parts["vae"]):
            mod.to(memory_format=torch.channels_last)
    layers = list(parts["layers"].values())
    vae_flops, den_flops = flops_per_image(model, layers, args.size)
    for n_t, ours in timed_extractions(model, dataset, work, arch, layers, args, device):
        flops = vae_flops + n_t * den_flops
        rows.append({"arch": arch, "timesteps": n_t, "ref_s": ref_time[n_t], "ours_s": ours,
                     "ratio": ref_time[n_t] / ours, "tflop_per_img": flops / 1e12,
                     "ceiling": flops / ours / peak, "dtype": str(dtype).replace("torch.", "")})
        print(f"[{arch}] difflens, {n_t} timestep(s): {ours:.4f} s/image", flush=True)
    print(f"[{arch}] FLOPs per image: VAE encoder {vae_flops / 1e9:.4g} GFLOP, denoiser up to "
          f"{layers[-1]} {den_flops / 1e9:.4g} GFLOP per timestep", flush=True)
    del model, parts
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


FAMILIES = ("sdxl", "pixart", "sd35m", "flux")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: the GPU's allocated bytes, or this process's maximum resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run_family(arch: str, args, device: torch.device, peak: float, work: Path) -> list[dict]:
    """A newer family's denoiser at full size (random weights, ``architectures.family_model``) through the library's
    extraction path, 4 blocks per timestep: s/image, FLOPs, and the memory of the weights and of a batch. No
    reference: no public interpretability code reads these models' blocks."""
    from architectures import FAMILY_LAYERS, family_model

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model = family_model(arch, args.size, args.scale, device, dtype)
    denoiser = model.unet if arch == "sdxl" else model.transformer
    weights = sum(p.numel() * p.element_size() for p in denoiser.parameters()) / 2 ** 30
    print(f"[{arch}] built from config values ({args.scale} scale) in {time.perf_counter() - t0:.1f} s, "
          f"denoiser weights {weights:.1f} GB", flush=True)
    layers = FAMILY_LAYERS[arch]
    dataset = make_dataset(work / f"{arch}-data", args.images, args.size)
    vae_flops, den_flops = flops_per_image(model, layers, args.size)
    rows = []
    for n_t, ours in timed_extractions(model, dataset, work, arch, layers, args, device):
        flops = vae_flops + n_t * den_flops
        rows.append({"arch": arch, "timesteps": n_t, "ref_s": float("nan"), "ours_s": ours, "ratio": float("nan"),
                     "tflop_per_img": flops / 1e12, "ceiling": flops / ours / peak,
                     "dtype": str(dtype).replace("torch.", ""), "size": args.size, "batch": args.batch_size,
                     "weights_gb": weights, "peak_gb": peak_memory_gb(device)})
        print(f"[{arch}] difflens, {n_t} timestep(s): {ours:.4f} s/image, peak {rows[-1]['peak_gb']:.1f} GB at "
              f"batch {args.batch_size}", flush=True)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["sd15", "dit", "both", *FAMILIES, "families"], default="sd15",
                    help="sd15 / dit (against the Revelio-style reference), both, or a newer family's denoiser at "
                    "full size (sdxl, pixart, sd35m, flux; families = all four): difflens alone, with its memory")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, help="image side in px (default 512 on a GPU, 64 on the CPU)")
    ap.add_argument("--images", type=int, help="images per measurement (default 64 on a GPU, 2 on the CPU)")
    ap.add_argument("--batch-size", type=int, help="images per batch, both paths (default 16 GPU, 2 CPU)")
    ap.add_argument("--timesteps", type=int, nargs="+", choices=[1, 4], default=[1, 4])
    ap.add_argument("--workers", type=int, default=4, help="image-reading threads of the difflens path")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format (difflens path)")
    ap.add_argument("--peak-tflops", type=float, help="peak of the device in TFLOP/s (default: table / measured)")
    ap.add_argument("--smoke", action="store_true", help="smoke-scale networks on the CPU (1 thread), 64 px, 2 "
                    "images: checks that the benchmark runs (seconds), measures nothing")
    ap.add_argument("--json", help="also write the table's rows to this JSON file (for bench/gpu_hours.py)")
    args = ap.parse_args(argv)
    args.scale = "smoke" if args.smoke else "paper"
    device = torch.device("cpu" if args.smoke else args.device)
    gpu = device.type == "cuda"
    args.size = args.size or (512 if gpu else 64)
    args.images = args.images or (64 if gpu else 2)
    args.batch_size = args.batch_size or (16 if gpu else 2)
    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)  # one thread: small ops on shared cores
    if args.size % 64:
        raise SystemExit(f"--size must be a multiple of 64 (SD's latent must halve 3 times), got {args.size}")
    peak, peak_text = peak_flops(device, args.peak_tflops, 0.2 if args.smoke else 1.0)
    name = device_name(device)
    print(f"difflens extraction benchmark: {name}, torch {torch.__version__}, {args.scale} scale, {args.size} px, "
          f"{args.images} images, batch {args.batch_size}, 4 layers; peak {peak_text}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="difflens-bench-") as tmp:
        archs = {"both": ["sd15", "dit"], "families": list(FAMILIES)}.get(args.arch, [args.arch])
        for arch in archs:
            run = run_family if arch in FAMILIES else run_arch
            rows += run(arch, args, device, peak, Path(tmp))
    print()
    print(f"{'arch':<5} {'T':>2} {'reference s/img':>15} {'img/s':>7} {'difflens s/img':>14} {'img/s':>7} "
          f"{'ratio':>6} {'TFLOP/img':>9} {'of ceiling':>10}")
    for r in rows:
        print(f"{r['arch']:<5} {r['timesteps']:>2} {r['ref_s']:>15.4f} {1 / r['ref_s']:>7.2f} {r['ours_s']:>14.4f} "
              f"{1 / r['ours_s']:>7.2f} {r['ratio']:>5.1f}x {r['tflop_per_img']:>9.4f} {r['ceiling']:>9.1%}")
    for r in rows:
        if "peak_gb" in r:
            print(f"{r['arch']}: {r['size']} px, batch {r['batch']}, {r['dtype']}: weights {r['weights_gb']:.1f} GB, "
                  f"peak {r['peak_gb']:.1f} GB ({r['timesteps']} timestep(s))")
    if gpu and ("H100" in name or "H200" in name):
        for r in rows:
            if r["arch"] == "sd15":
                ok = r["ratio"] >= TARGETS[r["timesteps"]] and r["ceiling"] >= 0.35
                print(f"target sd15 T={r['timesteps']} (set for an H100): ratio >= {TARGETS[r['timesteps']]:g} and "
                      f">= 35% of the ceiling: {'PASS' if ok else 'FAIL'}")
    write_json(args.json, {"device": name, "scale": args.scale, "size": args.size, "images": args.images,
                           "layers": 4, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
