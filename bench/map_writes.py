"""How fast can extraction store spatial maps? HDF5 write speed of paper-sized float16 maps, by compression.

    python bench/map_writes.py                       # SD up_ft1 (1280x32x32) and up_ft2 (640x64x64) at 512 px
    python bench/map_writes.py --images 64 --dir /scratch/me
    python bench/map_writes.py --smoke               # 2 maps per layer, written once (the tests' run)

Writes ``--images`` maps per layer in batches of ``--batch`` rows, as ``extract_activations`` does (one row per
chunk, float16), for each compression (none, lzf, gzip level 4), on the calling thread, and prints MB/s, images/s
and the compressed size. The maps are not random: a smooth field (random 4x4 grid upsampled bicubically) plus 10%
noise, passed through a GELU, which is about as compressible as real UNet activations. Compare the images/s with
what the GPU produces (about 57 images/s at 4 timesteps for SD 1.5 at 512 px on an H100): a compression whose
images/s is below it x (timesteps x layers with maps) makes the writer the bottleneck.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from difflens.extract.activations import compression_options  # noqa: E402

LAYERS = {"up_ft1": (1280, 32, 32), "up_ft2": (640, 64, 64)}


def realistic_maps(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """(n, C, H, W) float16 maps with spatial structure and an activation-like distribution."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn(n, c, 4, 4, generator=gen)
    smooth = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return F.gelu(smooth + 0.1 * torch.randn(n, c, h, w, generator=gen)).to(torch.float16).numpy()


def write_speed(path: Path, maps: np.ndarray, compression: str, batch: int, repeats: int) -> tuple[float, int]:
    """Seconds to write ``repeats`` x maps (batch rows at a time, flushed and closed) and the file size."""
    n = len(maps) * repeats
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("maps", (n, *maps.shape[1:]), np.float16, chunks=(1, *maps.shape[1:]),
                              fillvalue=np.nan, **compression_options(compression))
        for r in range(repeats):
            for a in range(0, len(maps), batch):
                block = maps[a:a + batch]
                ds[r * len(maps) + a:r * len(maps) + a + len(block)] = block
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return seconds, size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="distinct maps generated per layer")
    ap.add_argument("--repeats", type=int, default=2, help="times they are written (more data, same memory)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dir", default=None, help="folder to write in (default: a temp folder, removed after)")
    ap.add_argument("--smoke", action="store_true", help="2 maps per layer, written once, batches of 2: checks that "
                    "the benchmark runs (seconds), measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.repeats, args.batch = 2, 1, 2
    if args.dir:
        run(args, Path(args.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="map_writes_") as tmp:
            run(args, Path(tmp))


def run(args, folder: Path) -> None:
    """Write every layer's maps with every compression into ``folder`` and print the table."""
    print(f"map write benchmark: {args.images * args.repeats} images per layer, batches of {args.batch}, "
          f"float16, one row per chunk, in {folder}")
    print(f"{'layer':8} {'shape':>13} {'compression':>11} {'MB/s':>8} {'images/s':>9} {'size ratio':>10}")
    for layer, shape in LAYERS.items():
        maps = realistic_maps(args.images, shape)
        raw = maps.nbytes * args.repeats
        for compression in ("none", "lzf", "gzip"):
            seconds, size = write_speed(folder / f"{layer}-{compression}.h5", maps, compression, args.batch,
                                        args.repeats)
            print(f"{layer:8} {'x'.join(map(str, shape)):>13} {compression:>11} {raw / seconds / 1e6:8.0f} "
                  f"{args.images * args.repeats / seconds:9.1f} {size / raw:10.2f}")


if __name__ == "__main__":
    main()
