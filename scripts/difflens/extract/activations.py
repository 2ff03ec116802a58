"""Step 2 of extraction: every configured layer at every timestep of one latents shard, into HDF5.

For each batch of images, the latents are noised at every requested timestep with every noise draw (one denoiser
batch of images x timesteps x draws), the denoiser runs once with hooks on all requested layers, stopping after the
deepest, and the spatial mean (float32, averaged over draws) and optionally the spatial map (float16) of every
(timestep, layer) go to their own file. Prompts are the template with ``{label}`` replaced by the sample's class
name (empty template: unconditional), or with the template ``clip`` the prompt CLIP chose for the sample
(``chosen``); each distinct prompt is encoded once, and every file's row column ``prompt`` records each row's prompt.
On a CUDA out-of-memory error the batch halves and the work goes on. Every output file is written atomically
(``h5io``).
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .h5io import BackgroundWriter, atomic_h5, provenance, set_attrs, write_strings
from .latents import model_attrs
from .capture import Captured, capture_rows
from ..models.batching import HalvingBatcher
from .prompts import row_prompts
from .store import read_rows

log = logging.getLogger(__name__)

COMPRESSIONS = ("lzf", "gzip", "none")


def compression_options(name: str) -> dict:
    """h5py ``create_dataset`` keywords of a map compression (none, lzf, gzip level 4)."""
    if name not in COMPRESSIONS:
        raise ValueError(f"map compression {name!r} is not one of {list(COMPRESSIONS)}")
    return {} if name == "none" else {"compression": name, **({"compression_opts": 4} if name == "gzip" else {})}


def _write_batch(feats: dict, parts: list[dict[str, Captured]], timesteps: list[int], layers: list[str],
                 sel: np.ndarray, lo: int, hi: int) -> None:
    """Write one batch's features to file rows lo..hi-1 (rows not in ``sel``, unreadable images, stay NaN)."""
    for ti, t in enumerate(timesteps):
        for layer in layers:
            pooled, maps = feats[t, layer]
            block = np.full((hi - lo, pooled.shape[1]), np.nan, np.float32)
            block[sel - lo] = torch.cat([p[layer].pooled[ti] for p in parts]).numpy()
            pooled[lo:hi] = block
            if maps is not None:
                mblock = np.full((hi - lo, *maps.shape[1:]), np.nan, np.float16)
                mblock[sel - lo] = torch.cat([p[layer].maps[ti] for p in parts]).numpy()
                maps[lo:hi] = mblock


def extract_activations(model, latents: str | Path, outputs: dict[tuple[int, str], str | Path], *,
                        seed: int = 0, noise_draws: int = 1, prompt: str = "", batch_size: int = 64,
                        save_maps: bool = False, compression: str = "none", meta: dict | None = None,
                        chosen: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Activations of one latents shard: ``outputs`` maps (timestep, layer) -> file; every layer and timestep of a
    batch comes from one denoiser batch that stops after the deepest layer. Returns a summary. ``chosen``: {sample
    id: prompt} of the prompt ``clip`` (``prompts.read_chosen``).

    ``batch_size`` counts images; a denoiser batch has batch_size x timesteps x noise_draws rows. Features are
    written (and compressed) by a background thread while the denoiser runs the next batch.
    """
    if noise_draws < 1:
        raise ValueError(f"noise_draws must be >= 1, got {noise_draws}")
    timesteps = sorted({int(t) for t, _ in outputs})
    layers = list(dict.fromkeys(layer for _, layer in outputs))
    missing = [(t, layer) for t in timesteps for layer in layers if (t, layer) not in outputs]
    if missing:
        raise ValueError(f"outputs must cover every (timestep, layer) pair; missing {missing}")
    for t in timesteps:
        model.check_timestep(t)
    modules = {layer: model.canonical_layer(layer) for layer in layers}
    comp = compression_options(compression)
    with h5py.File(latents, "r") as src:
        rows = read_rows(src)
        src_attrs = {k: src.attrs[k] for k in ("dataset", "shard", "row_offset") if k in src.attrs}
        n = len(rows["valid"])
        ok = np.flatnonzero(rows["valid"])
        prompts = np.full(n, "", dtype=object)  # unreadable rows have none
        prompts[ok] = row_prompts(prompt, rows["sample_id"][ok], rows["label_name"][ok], chosen)
        lat = src["latents"]
        attrs = {**src_attrs, **(meta or {}), **model_attrs(model), "prompt": prompt, "seed": int(seed),
                 "noise_draws": int(noise_draws), "n_rows": n, "n_valid": int(len(ok)), "maps": bool(save_maps),
                 **provenance()}
        batcher = HalvingBatcher(batch_size, "images (denoiser)", "extraction.batch_size")
        shapes: dict[str, tuple[int, ...]] = {}
        with ExitStack() as stack:
            files, feats = {}, {}
            for (t, layer), path in outputs.items():
                f = files[int(t), layer] = stack.enter_context(atomic_h5(path))
                for key in ("sample_id", "split", "label_name"):
                    write_strings(f, key, rows[key])
                write_strings(f, "prompt", prompts)
                f.create_dataset("label", data=rows["label"])
                f.create_dataset("valid", data=rows["valid"])
                if "attributes" in src:  # the data set's attribute columns travel with every row table
                    src.copy(src["attributes"], f, "attributes")
                set_attrs(f, {**attrs, "layer": layer, "module": modules[layer], "timestep": int(t)})

            def create_features():  # once the first batch (or, with no valid row, a probe) shows the map shapes
                for (t, layer), f in files.items():
                    shape = shapes[layer]
                    pooled = f.create_dataset("pooled", (n, shape[0]), np.float32, fillvalue=np.nan)
                    maps = f.create_dataset("maps", (n, *shape), np.float16, chunks=(1, *shape), fillvalue=np.nan,
                                            **comp) if save_maps else None
                    set_attrs(f, {"map_shape": list(shape)})
                    feats[t, layer] = (pooled, maps)

            writer = stack.enter_context(BackgroundWriter())  # closed (drained) before the files above
            desc = f"activations shard {src_attrs.get('shard', '?')} t={','.join(map(str, timesteps))}"
            bar = tqdm(total=len(ok), desc=desc, unit="img", disable=not progress, mininterval=5)
            for a in range(0, len(ok), batch_size):
                sel = ok[a:a + batch_size]
                lo, hi = int(sel[0]), int(sel[-1]) + 1  # contiguous file rows; invalid ones in between stay NaN
                x0 = torch.from_numpy(lat[lo:hi][sel - lo]).to(model.device)
                ids = list(rows["sample_id"][sel])
                cond = model.encode_text(list(prompts[sel]))
                parts = batcher.run(len(sel), lambda s, e: capture_rows(
                    model, x0[s:e], ids[s:e], cond[s:e], timesteps, noise_draws, layers, seed, save_maps))
                if not feats:
                    shapes.update({layer: got.shape for layer, got in parts[0].items()})
                    create_features()
                writer.submit(_write_batch, feats, parts, timesteps, layers, sel, lo, hi)
                bar.update(len(sel))
            bar.close()
            if not feats:  # no readable image in this shard: all-NaN rows of the right shapes
                probe = capture_rows(model, torch.zeros(1, *lat.shape[1:]), [""], model.encode_text([""]),
                                      timesteps[:1], 1, layers, seed, False)
                shapes.update({layer: got.shape for layer, got in probe.items()})
                create_features()
    return {"n_rows": n, "n_valid": int(len(ok)), "timesteps": timesteps, "layers": layers,
            "map_shapes": {k: list(v) for k, v in shapes.items()}, "final_batch_size": batcher.size}
