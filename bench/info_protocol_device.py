"""Device check (not run by ``make test``): the information stage's paper-protocol paths on a GPU give the CPU's
numbers, and what they cost there.

On the shipped shapes model and a tiny random-weight SD (``build_tiny_sd`` of tests/tiny_pipelines.py), both
loaded in float32 on the CPU and on the device, for a few held-out scenes and their captions:

* ``localize.image_maps`` with nested draw counts (``counts``) and the DDIM-inversion attention (``ddim_steps``):
  every map (``cmi``, ``cmi@n``, ``mi``, ``attention_itd``, ``attention_ddim``) on the device against the CPU, as the
  largest absolute difference over the map's largest value;
* ``intervene.change_maps`` (inversion per (image, caption), regeneration with the word omitted, attention traced
  during the regeneration through the recorder's slots): the change and ``attention_regen`` maps, the same way;
* the wall time of each on each device.

    python bench/info_protocol_device.py            # needs a CUDA device; about a minute
    python bench/info_protocol_device.py --no-tf32     # without TF32: what is left is summation order
    python bench/info_protocol_device.py --device cpu  # both sides on the CPU: the check's own noise floor (0)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from harness import ROOT  # also puts the library (scripts/) on sys.path

sys.path.insert(0, str(ROOT / "tests"))

from difflens.data.shapes import caption_of, heldout_scenes  # noqa: E402
from difflens.info.estimators import LogSNRSampler  # noqa: E402
from difflens.info.intervene import change_maps, edits_of  # noqa: E402
from difflens.info.localize import image_maps  # noqa: E402
from difflens.models import load_model  # noqa: E402
from shapes_checkpoint import scene_latents  # noqa: E402
from tiny_pipelines import build_tiny_sd  # noqa: E402


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over the largest |b| (0 when both are 0)."""
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / scale if scale > 0 else float(np.abs(a).max())


COLOURS = ("red", "green", "blue", "yellow")


def colour_rows(scenes) -> pd.DataFrame:
    """One word row per scene: the caption's first colour word, its context the caption without it."""
    rows = []
    for i, scene in scenes:
        caption = caption_of(scene).lower()
        word = next(w for w in caption.split() if w in COLOURS)
        rows.append({"sample_id": f"scene-{i}", "word": word, "word_type": "colour", "caption": caption,
                     "context": " ".join(w for w in caption.split() if w != word), "objects": ""})
    return pd.DataFrame(rows)


def run(model, rows: pd.DataFrame, latents, sampler: LogSNRSampler, args) -> tuple[dict, dict, float, float]:
    """(maps per row and key, change and attention maps, seconds for the maps, seconds for the edits)."""
    t = time.perf_counter()
    maps = {}
    for k, (r, x0) in enumerate(zip(rows.itertuples(), latents)):
        maps[k] = image_maps(model, x0, r.caption, [r.word], [r.context], n_draws=args.draws, sampler=sampler,
                             seed=0, item=r.sample_id, batch_size=64, counts=[args.draws // 2],
                             ddim_steps=args.ddim_steps)
    maps_s = time.perf_counter() - t
    t = time.perf_counter()
    change, att = change_maps(model, dict(zip(rows["sample_id"], latents)), edits_of(rows, {}, 1, "delete"),
                              steps=args.ode_steps, solver="heun", batch_size=64, progress=False)
    return maps, {"change": change, "attention_regen": att}, maps_s, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--ode-steps", type=int, default=10)
    parser.add_argument("--no-tf32", action="store_true", help="full float32 convolutions and matmuls on the GPU "
                        "(PyTorch runs convolutions in TF32 by default)")
    args = parser.parse_args()
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    scenes = heldout_scenes(args.scenes)
    rows = colour_rows(scenes)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"shapes": ("shapes", str(ROOT / "resources" / "shapes_model"), LogSNRSampler(0.0, 2.0, 3.0)),
                   "tiny sd": ("sd", str(build_tiny_sd(f"{tmp}/sd")), LogSNRSampler(1.0, 2.0, 3.0))}
        print(f"{'model':8s} {'quantity':22s} {'max |device - cpu| / max |cpu|':>32s}")
        for name, (kind, source, sampler) in sources.items():
            out = {}
            for device in ("cpu", args.device):
                model = load_model(kind, source, dtype="float32", device=device)
                latents = scene_latents(model, scenes).cpu()
                out[device] = run(model, rows, latents, sampler, args)
            (cpu_maps, cpu_edit, cpu_t1, cpu_t2), (dev_maps, dev_edit, dev_t1, dev_t2) = out["cpu"], out[args.device]
            for key in cpu_maps[0]:
                err = max(relative(dev_maps[k][key], cpu_maps[k][key]) for k in cpu_maps)
                print(f"{name:8s} {'maps: ' + key:22s} {err:32.2e}")
            for key in cpu_edit:
                print(f"{name:8s} {'edits: ' + key:22s} {relative(dev_edit[key], cpu_edit[key]):32.2e}")
            print(f"{name:8s} seconds: maps {cpu_t1:.1f} (cpu) / {dev_t1:.1f} ({args.device}); edits {cpu_t2:.1f} / "
                  f"{dev_t2:.1f}")


if __name__ == "__main__":
    main()
