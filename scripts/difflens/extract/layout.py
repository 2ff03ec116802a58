"""Where extraction writes: paths and shard plans. Pure Python (json only), so a Snakefile can import it.

Layout under the results folder (``{layer}`` as configured, e.g. ``mid_block`` or ``up_ft1``):

``latents/{model}/{dataset}/shards.json``
    the shard plan: ``{"n_samples", "shard_size", "n_shards"}``; shard ``k`` holds rows
    ``k * shard_size .. (k + 1) * shard_size - 1`` of the data set's ``samples.csv`` (all splits, file order).
``latents/{model}/{dataset}/shard-{k}.h5``
    ``sample_id``, ``split``, ``label_name`` (str), ``label`` (int64), ``valid`` (bool), ``skip_reason`` (str, empty
    when valid) and ``latents`` (N, C, h, w) float32: the model's encoding of the preprocessed image (VAE mode x
    scaling factor), NaN in the rows of images that could not be read.
``latents/{model}/{dataset}/skipped.csv``
    ``sample_id``, ``reason`` of every image that could not be read (their rows stay in place, ``valid`` False).
``activations/{model}/{dataset}/t{timestep}/{layer}/shard-{k}.h5``
    the same row columns, ``pooled`` (N, C) float32 (spatial mean, averaged over noise draws) and, when maps were
    asked for, ``maps`` (N, C, H, W) float16, chunked one row per chunk and compressed. Attributes: model, kind,
    source, dataset, layer, module, timestep, prompt, seed, noise_draws, dtype, resolution, geometry, shard,
    row_offset, n_rows, n_valid, versions, created, format_version.
``activations/{model}/{dataset}/index.json``
    written once every shard of every (timestep, layer) is complete: what exists, with row counts.

Rows are never dropped or moved: row ``i`` of every file of shard ``k`` is sample ``k * shard_size + i``. The reader
drops invalid rows by default (``valid_only``), so ids, labels and features always stay aligned.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


def latents_dir(results: str | Path, model: str, dataset: str) -> Path:
    return Path(results) / "latents" / model / dataset


def latents_path(results: str | Path, model: str, dataset: str, shard: int) -> Path:
    return latents_dir(results, model, dataset) / f"shard-{shard}.h5"


def activations_dir(results: str | Path, model: str, dataset: str) -> Path:
    return Path(results) / "activations" / model / dataset


def activation_path(results: str | Path, model: str, dataset: str, timestep: int, layer: str, shard: int) -> Path:
    return activations_dir(results, model, dataset) / f"t{int(timestep)}" / layer / f"shard-{shard}.h5"


def index_path(results: str | Path, model: str, dataset: str) -> Path:
    return activations_dir(results, model, dataset) / "index.json"


def extraction_index_paths(results: str | Path, config: dict) -> list[str]:
    """The pipeline's extraction targets: one index per (extraction model, extraction data set) of a config."""
    ex = config["extraction"]
    return [str(index_path(results, m, d)) for m in ex["models"] or list(config["models"]) for d in ex["datasets"]]


def latent_shard_paths(results: str | Path, model: str, dataset: str, plan: str | Path) -> list[str]:
    """Every latents shard of (model, data set) under the shard plan file ``plan``."""
    return [str(latents_path(results, model, dataset, k)) for k in range(read_shard_plan(plan).n_shards)]


def activation_shard_paths(results: str | Path, model: str, dataset: str, timesteps, layers,
                           plan: str | Path) -> list[str]:
    """Every activation file of (model, data set): timesteps x layers x shards of the plan file ``plan``."""
    n = read_shard_plan(plan).n_shards
    return [str(activation_path(results, model, dataset, t, layer, k)) for t in timesteps for layer in layers
            for k in range(n)]


@dataclass(frozen=True)
class ShardPlan:
    """How a data set's rows are cut into shards."""

    n_samples: int
    shard_size: int

    def __post_init__(self):
        if self.shard_size < 1 or self.n_samples < 0:
            raise ValueError(f"shard plan: shard_size must be >= 1 and n_samples >= 0, got {self.shard_size}, "
                             f"{self.n_samples}")

    @property
    def n_shards(self) -> int:
        return max(1, math.ceil(self.n_samples / self.shard_size))

    def rows(self, shard: int) -> range:
        if not 0 <= shard < self.n_shards:
            raise ValueError(f"shard {shard} is outside 0..{self.n_shards - 1} ({self.n_samples} samples, "
                             f"shard_size {self.shard_size})")
        return range(shard * self.shard_size, min(self.n_samples, (shard + 1) * self.shard_size))

    def to_json(self) -> dict:
        return {"n_samples": self.n_samples, "shard_size": self.shard_size, "n_shards": self.n_shards}


def write_shard_plan(dataset_json: str | Path, out: str | Path, shard_size: int) -> ShardPlan:
    """The shard plan of a built data set (its sample count from dataset.json, else samples.csv), as JSON."""
    dataset_json = Path(dataset_json)
    meta = json.loads(dataset_json.read_text())
    n = meta.get("n_samples")
    if n is None:
        with open(dataset_json.parent / "samples.csv") as f:
            n = sum(1 for _ in f) - 1
    plan = ShardPlan(int(n), int(shard_size))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": meta.get("name"), **plan.to_json()}, indent=1) + "\n")
    return plan


def read_shard_plan(path: str | Path) -> ShardPlan:
    d = json.loads(Path(path).read_text())
    return ShardPlan(d["n_samples"], d["shard_size"])
