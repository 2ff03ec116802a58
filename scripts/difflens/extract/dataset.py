"""Latents and activations of a whole data set without Snakemake, in the pipeline's layout (for notebooks)."""
from __future__ import annotations

from pathlib import Path

from ..data.common import Dataset
from .activations import extract_activations
from .latents import encode_latents
from .layout import activation_path, latents_path, read_shard_plan, write_shard_plan
from .store import write_skipped


def extract_dataset(model, dataset: Dataset, results: str | Path, model_name: str, *, layers: list[str],
                    timesteps: list[int], shard_size: int = 16384, batch_size: int = 64, seed: int = 0,
                    noise_draws: int = 1, prompt: str = "", save_maps: bool = False, compression: str = "none",
                    workers: int = 4, chosen: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Latents and activations of every shard into the pipeline's layout under ``results``, as the rules do.

    Resumable: shard files that already exist are kept (each is written atomically, so an existing file is
    complete). Returns {"latents": [...], "activations": [...]} of the files that were (re)written. ``chosen``: the
    per-image prompts of ``prompt="clip"`` (``clip_prompts.choose_prompts``, {sample id: prompt}).
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
        outs = {(t, layer): activation_path(results, model_name, dataset.name, t, layer, k) for t in timesteps
                for layer in layers}
        if not all(Path(p).is_file() for p in outs.values()):  # one job's work: every timestep and layer of a shard
            extract_activations(model, lat, outs, seed=seed, noise_draws=noise_draws, prompt=prompt,
                                batch_size=batch_size, save_maps=save_maps, compression=compression, meta=meta,
                                chosen=chosen, progress=progress)
            written["activations"] += list(outs.values())
    write_skipped([latents_path(results, model_name, dataset.name, k) for k in range(plan.n_shards)],
                    results / "latents" / model_name / dataset.name / "skipped.csv")
    return written
