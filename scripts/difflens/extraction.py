"""Latents once, then every configured layer at every timestep from one stopped-early denoiser pass, into HDF5.

Two steps, each per shard of a data set (the layout is described in ``difflens.features``):

1. ``encode_latents``: read each image, preprocess it for the model (resize / centre crop to its resolution,
   [-1, 1]), encode it (VAE posterior mode x scaling factor, or the shapes model's space-to-depth) and store the
   latents. An unreadable image keeps its row (NaN latents, ``valid`` False, ``skip_reason``); the rest goes on.
2. ``extract_activations``: for each batch of images, noise the latents at every requested timestep with every noise
   draw (one denoiser batch of images x timesteps x draws), run the denoiser once with hooks on all requested layers,
   stopping after the deepest, and write the spatial mean (float32, averaged over draws) and optionally the spatial
   map (float16) of every (timestep, layer) to its own file.

Noise for (sample id, timestep, draw) comes from a generator seeded by a hash of ``(seed, sample id, timestep,
draw)``, drawn on the CPU in float32, so features never depend on batch size, shard size, order or device.
Prompts are the template with ``{label}`` replaced by the sample's class name (empty template: unconditional); the
condition encoder runs once per distinct prompt (``DiffusionModel.encode_text`` caches). On a CUDA out-of-memory
error the batch halves and the work goes on. Every output file is written atomically (``difflens.h5io``).
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .data.common import Dataset, DatasetError
from .features import (ShardPlan, activation_path, latents_path, read_rows, read_shard_plan, skipped_table,
                       write_shard_plan)
from .h5io import atomic_h5, provenance, set_attrs, write_strings

log = logging.getLogger(__name__)

COMPRESSIONS = ("lzf", "gzip", "none")


# ---- noise and prompts --------------------------------------------------------------------------------------------
def noise_seed(seed: int, sample_id: str, timestep: int, draw: int) -> int:
    """A 63-bit generator seed that depends only on (seed, sample id, timestep, draw)."""
    key = f"{int(seed)}\x1f{sample_id}\x1f{int(timestep)}\x1f{int(draw)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2 ** 63 - 1)


def sample_noise(shape: tuple[int, ...], seed: int, sample_ids, timestep: int, draw: int) -> torch.Tensor:
    """Standard normal noise (B, *shape), float32 on the CPU, row b seeded by (seed, sample_ids[b], timestep, draw)."""
    gen = torch.Generator()
    out = torch.empty((len(sample_ids), *shape))
    for b, sid in enumerate(sample_ids):
        gen.manual_seed(noise_seed(seed, sid, timestep, draw))
        out[b] = torch.randn(shape, generator=gen)
    return out


def format_prompt(template: str, label_name: str) -> str:
    """The prompt of one image: ``template`` with every ``{label}`` replaced by its class name."""
    return template.replace("{label}", str(label_name))


# ---- batching -----------------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class HalvingBatcher:
    """Runs ``fn(a, b)`` over ``[0, n)`` in slices of at most ``size``; an out-of-memory error halves ``size``
    (for the rest of the run) and retries the slice. Fails only if a single item does not fit."""

    def __init__(self, size: int, what: str = "batch"):
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.size, self.what = int(size), what

    def run(self, n: int, fn) -> list:
        out, a = [], 0
        while a < n:
            b = min(n, a + self.size)
            try:
                out.append(fn(a, b))
                a = b
                continue
            except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
                if not _is_oom(exc) or b - a == 1:
                    raise
            # outside the except block, so the traceback (and the tensors its frames hold) is already freed
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.size = max(1, (b - a) // 2)
            log.warning("out of memory at %d %s; continuing with %d", b - a, self.what, self.size)
        return out


# ---- latents ------------------------------------------------------------------------------------------------------
def _row_columns(f: h5py.File, rows: pd.DataFrame) -> None:
    write_strings(f, "sample_id", rows["sample_id"])
    write_strings(f, "split", rows["split"])
    write_strings(f, "label_name", rows["label_name"])
    f.create_dataset("label", data=rows["label"].to_numpy(np.int64))


def _load_one(model, dataset: Dataset, sample_id: str):
    try:
        return model.preprocess([dataset.load_image(sample_id)])[0], ""
    except DatasetError as exc:
        return None, str(exc)


def _latent_shape(model) -> tuple[int, ...]:
    """Shape of one image's latents, from encoding a blank image (only needed when no image of a shard is readable)."""
    r = model.resolution
    with torch.inference_mode():
        return tuple(model.encode_images(torch.zeros(1, 3, r, r)).shape[1:])


def encode_latents(model, dataset: Dataset, out: str | Path, *, shard: int = 0, shard_size: int | None = None,
                   batch_size: int = 64, workers: int = 4, meta: dict | None = None, progress: bool = True) -> dict:
    """Encode one shard of ``dataset`` with ``model`` into the latents file ``out``; returns a summary.

    ``shard_size`` None means one shard holding every sample. Images are read by ``workers`` threads, one batch
    ahead of the encoder.
    """
    n_all = len(dataset.samples)
    plan = ShardPlan(n_all, shard_size or max(1, n_all))
    rows = dataset.samples.iloc[plan.rows(shard)].reset_index(drop=True)
    ids = list(rows["sample_id"])
    n = len(ids)
    valid = np.zeros(n, bool)
    reasons = [""] * n
    batcher = HalvingBatcher(batch_size, "images (encoder)")
    attrs = {**(meta or {}), **_model_attrs(model), "shard": shard, "row_offset": plan.rows(shard).start,
             "n_rows": n, **provenance()}
    with atomic_h5(out) as f, ThreadPoolExecutor(max(1, workers)) as pool:
        _row_columns(f, rows)

        def latents_dataset(shape):  # created once the first batch shows the latent shape
            return f.create_dataset("latents", (n, *shape), np.float32, chunks=(1, *shape), fillvalue=np.nan)

        lat = None
        starts = list(range(0, n, batch_size))

        def submit(a):
            return [pool.submit(_load_one, model, dataset, sid) for sid in ids[a:a + batch_size]]

        pending = submit(0) if starts else []
        bar = tqdm(total=n, desc=f"latents shard {shard}", unit="img", disable=not progress, mininterval=5)
        for i, a in enumerate(starts):
            loaded = [fut.result() for fut in pending]
            pending = submit(starts[i + 1]) if i + 1 < len(starts) else []
            ok = [j for j, (px, _) in enumerate(loaded) if px is not None]
            for j, (_, why) in enumerate(loaded):
                if why:
                    reasons[a + j] = why
                    log.warning("skipping %s: %s", ids[a + j], why)
            if ok:
                pixels = torch.stack([loaded[j][0] for j in ok])
                with torch.inference_mode():
                    parts = batcher.run(len(ok), lambda s, e: model.encode_images(pixels[s:e]).float().cpu())
                enc = torch.cat(parts).numpy()
                if lat is None:
                    lat = latents_dataset(enc.shape[1:])
                block = np.full((len(loaded), *enc.shape[1:]), np.nan, np.float32)
                block[ok] = enc
                lat[a:a + len(loaded)] = block
                valid[[a + j for j in ok]] = True
            bar.update(len(loaded))
        bar.close()
        if lat is None:  # no readable image in this shard
            lat = latents_dataset(_latent_shape(model))
        f.create_dataset("valid", data=valid)
        write_strings(f, "skip_reason", reasons)
        attrs.update(n_valid=int(valid.sum()), latent_shape=list(lat.shape[1:]))
        set_attrs(f, attrs)
    skipped = [(ids[j], reasons[j]) for j in range(n) if not valid[j]]
    return {"shard": shard, "n_rows": n, "n_valid": int(valid.sum()), "skipped": skipped}


def _model_attrs(model) -> dict:
    return {"kind": model.kind, "source": str(model.source), "dtype": str(model.dtype).replace("torch.", ""),
            "resolution": int(model.resolution)}


def collect_skipped(latent_files: list[str | Path], out: str | Path) -> pd.DataFrame:
    """The skipped-samples table (sample_id, reason) of all latents shards, written to ``out`` as CSV."""
    df = skipped_table(latent_files)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(out)
    return df


# ---- activations --------------------------------------------------------------------------------------------------
def _compression(name: str) -> dict:
    if name not in COMPRESSIONS:
        raise ValueError(f"map compression {name!r} is not one of {list(COMPRESSIONS)}")
    return {} if name == "none" else {"compression": name, **({"compression_opts": 4} if name == "gzip" else {})}


class Captured(NamedTuple):
    pooled: torch.Tensor  # (T, b, C) float32, CPU
    maps: torch.Tensor | None  # (T, b, C, H, W) float16, CPU
    shape: tuple[int, ...]  # (C, H, W) of one map


def _capture_rows(model, x0: torch.Tensor, ids: list[str], cond: torch.Tensor, timesteps: list[int], draws: int,
                  layers: list[str], seed: int, save_maps: bool) -> dict[str, Captured]:
    """One denoiser batch of len(ids) x len(timesteps) x draws rows -> per layer, pooled (and map) per timestep.

    Rows are ordered timestep-major, then draw, then image; draws are averaged.
    """
    b, n_t = len(ids), len(timesteps)
    noise = torch.cat([sample_noise(tuple(x0.shape[1:]), seed, ids, t, d) for t in timesteps for d in range(draws)])
    t_rows = torch.tensor(timesteps, dtype=torch.long).repeat_interleave(draws * b)
    x0_rows = x0.repeat(n_t * draws, *[1] * (x0.dim() - 1))
    x_t = model.add_noise(x0_rows, noise.to(x0.device), t_rows.to(x0.device))
    cond_rows = cond.repeat(n_t * draws, *[1] * (cond.dim() - 1))
    with torch.inference_mode():
        got = model.capture(x_t, t_rows, cond_rows, layers)
        out = {}
        for name, m in got.items():
            pooled = m.mean(dim=(-2, -1), dtype=torch.float32).view(n_t, draws, b, -1).mean(1)
            maps = None
            if save_maps:
                m = m.reshape(n_t, draws, b, *m.shape[1:])
                maps = (m[:, 0] if draws == 1 else m.float().mean(1)).to(torch.float16).cpu()
            out[name] = Captured(pooled.cpu(), maps, tuple(m.shape[-3:]))
    return out


def extract_activations(model, latents: str | Path, outputs: dict[tuple[int, str], str | Path], *,
                        seed: int = 0, noise_draws: int = 1, prompt: str = "", batch_size: int = 64,
                        save_maps: bool = False, compression: str = "lzf", meta: dict | None = None,
                        progress: bool = True) -> dict:
    """Activations of one latents shard: ``outputs`` maps (timestep, layer) -> file; every layer and timestep of a
    batch comes from one denoiser batch that stops after the deepest layer. Returns a summary.

    ``batch_size`` counts images; a denoiser batch has batch_size x timesteps x noise_draws rows.
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
    comp = _compression(compression)
    with h5py.File(latents, "r") as src:
        rows = read_rows(src)
        src_attrs = {k: src.attrs[k] for k in ("dataset", "shard", "row_offset") if k in src.attrs}
        n = len(rows["valid"])
        ok = np.flatnonzero(rows["valid"])
        lat = src["latents"]
        attrs = {**src_attrs, **(meta or {}), **_model_attrs(model), "prompt": prompt, "seed": int(seed),
                 "noise_draws": int(noise_draws), "n_rows": n, "n_valid": int(len(ok)), "maps": bool(save_maps),
                 **provenance()}
        batcher = HalvingBatcher(batch_size, "images (denoiser)")
        shapes: dict[str, tuple[int, ...]] = {}
        with ExitStack() as stack:
            files, feats = {}, {}
            for (t, layer), path in outputs.items():
                f = files[int(t), layer] = stack.enter_context(atomic_h5(path))
                for key in ("sample_id", "split", "label_name"):
                    write_strings(f, key, rows[key])
                f.create_dataset("label", data=rows["label"])
                f.create_dataset("valid", data=rows["valid"])
                set_attrs(f, {**attrs, "layer": layer, "module": modules[layer], "timestep": int(t)})

            def create_features():  # once the first batch (or, with no valid row, a probe) shows the map shapes
                for (t, layer), f in files.items():
                    shape = shapes[layer]
                    pooled = f.create_dataset("pooled", (n, shape[0]), np.float32, fillvalue=np.nan)
                    maps = f.create_dataset("maps", (n, *shape), np.float16, chunks=(1, *shape), fillvalue=np.nan,
                                            **comp) if save_maps else None
                    set_attrs(f, {"map_shape": list(shape)})
                    feats[t, layer] = (pooled, maps)

            desc = f"activations shard {src_attrs.get('shard', '?')} t={','.join(map(str, timesteps))}"
            bar = tqdm(total=len(ok), desc=desc, unit="img", disable=not progress, mininterval=5)
            for a in range(0, len(ok), batch_size):
                sel = ok[a:a + batch_size]
                lo, hi = int(sel[0]), int(sel[-1]) + 1  # contiguous file rows; invalid ones in between stay NaN
                x0 = torch.from_numpy(lat[lo:hi][sel - lo]).to(model.device)
                ids = list(rows["sample_id"][sel])
                cond = model.encode_text([format_prompt(prompt, name) for name in rows["label_name"][sel]])
                parts = batcher.run(len(sel), lambda s, e: _capture_rows(
                    model, x0[s:e], ids[s:e], cond[s:e], timesteps, noise_draws, layers, seed, save_maps))
                if not feats:
                    shapes.update({layer: got.shape for layer, got in parts[0].items()})
                    create_features()
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
                bar.update(len(sel))
            bar.close()
            if not feats:  # no readable image in this shard: all-NaN rows of the right shapes
                probe = _capture_rows(model, torch.zeros(1, *lat.shape[1:]), [""], model.encode_text([""]),
                                      timesteps[:1], 1, layers, seed, False)
                shapes.update({layer: got.shape for layer, got in probe.items()})
                create_features()
    return {"n_rows": n, "n_valid": int(len(ok)), "timesteps": timesteps, "layers": layers,
            "map_shapes": {k: list(v) for k, v in shapes.items()}, "final_batch_size": batcher.size}


# ---- a whole data set without Snakemake ---------------------------------------------------------------------------
def extract_dataset(model, dataset: Dataset, results: str | Path, model_name: str, *, layers: list[str],
                    timesteps: list[int], shard_size: int = 4096, batch_size: int = 64, seed: int = 0,
                    noise_draws: int = 1, prompt: str = "", save_maps: bool = False, compression: str = "lzf",
                    workers: int = 4, progress: bool = True) -> dict:
    """Latents and activations of every shard into the pipeline's layout under ``results``, as the rules do.

    Resumable: shard files that already exist are kept (each is written atomically, so an existing file is
    complete). Returns {"latents": [...], "activations": [...]} of the files that were (re)written.
    """
    results = Path(results)
    plan_path = results / "latents" / model_name / dataset.name / "shards.json"
    plan = write_shard_plan(dataset.root / "dataset.json", plan_path, shard_size) if not plan_path.is_file() \
        else read_shard_plan(plan_path)
    if plan.shard_size != shard_size or plan.n_samples != len(dataset.samples):
        raise ValueError(f"{plan_path} was written for {plan.n_samples} samples in shards of {plan.shard_size}; "
                         f"remove it (and the shards) to re-shard with shard_size {shard_size}")
    meta = {"model": model_name, "dataset": dataset.name}
    written = {"latents": [], "activations": []}
    for k in range(plan.n_shards):
        lat = latents_path(results, model_name, dataset.name, k)
        if not lat.is_file():
            encode_latents(model, dataset, lat, shard=k, shard_size=shard_size, batch_size=batch_size,
                           workers=workers, meta=meta, progress=progress)
            written["latents"].append(lat)
        for t in timesteps:
            outs = {(t, layer): activation_path(results, model_name, dataset.name, t, layer, k) for layer in layers}
            if all(Path(p).is_file() for p in outs.values()):
                continue
            extract_activations(model, lat, outs, seed=seed, noise_draws=noise_draws, prompt=prompt,
                                batch_size=batch_size, save_maps=save_maps, compression=compression, meta=meta,
                                progress=progress)
            written["activations"] += list(outs.values())
    collect_skipped([latents_path(results, model_name, dataset.name, k) for k in range(plan.n_shards)],
                    results / "latents" / model_name / dataset.name / "skipped.csv")
    return written
