"""What the k-SAE jobs hold in memory, from the sizes they will read: the working-memory budget that the encoder
batches and the analysis chunks keep to, and the bytes of a training and an analysis job. Pure Python (json and csv
only): the Snakefile computes each job's memory request from these when the job is ready.

Sizes: ``d`` input width, ``n_latents``, ``positions`` vectors per image (1 pooled, H x W spatial), images or vectors
of a split. Every term is in bytes and named in the function that adds it; ``train_bytes`` and ``analysis_bytes``
count what a job on the CPU holds (on a GPU the optimiser state and the training step's dense pre-activations live
on the device, so there the request errs high). The rules add the Python process and headroom
(``difflens.resources.request_mb``). Checked against the peak RSS of the same work on the CPU (d 640, 40,960
latents): training on 3,000 vectors held 2.2 GB where ``train_bytes`` counts 2.6 GB, analysing 6,000 images 1.6 GB
where ``analysis_bytes`` (less the grid) counts 1.7 GB.
"""
from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path

#: working memory of one encoder batch or one analysis chunk, bytes
CHUNK_BYTES = 256 * 2 ** 20
FLOAT32, FLOAT64 = 4, 8
#: top-image grid: 10 x 12 images loaded at full size (about 500 px on the paper's sets) and their mosaic
GRID_BYTES = 300 * 10 ** 6
#: the latent table and the summary per latent besides its AUROC row: ~10 numbers, the top-image string, objects
TABLE_BYTES_PER_LATENT = 400
#: images of maps the store reads at a time for spatial input (``data.load_vectors``)
LOAD_BATCH_ROWS = 256


def encode_batch(n_latents: int, budget: int | None = None) -> int:
    """Vectors per encoder batch: their dense pre-activations (batch x n_latents float32, held twice while the ReLU
    runs) fit in ``budget`` (None: ``CHUNK_BYTES``)."""
    return max(1, (budget or CHUNK_BYTES) // (2 * FLOAT32 * max(1, n_latents)))


def latent_chunk(n_images: int, bytes_per_entry: int, budget: int | None = None) -> int:
    """Latents per analysis chunk: (n_images x chunk) entries of ``bytes_per_entry`` working memory fit in
    ``budget`` (None: ``CHUNK_BYTES``)."""
    return max(1, (budget or CHUNK_BYTES) // (max(1, n_images) * bytes_per_entry))


def model_bytes(d: int, n_latents: int) -> int:
    """A k-SAE's float32 parameters: encoder and decoder (n_latents x d each), their biases."""
    return (2 * n_latents * d + n_latents + 2 * d) * FLOAT32


def vectors_bytes(n_images: int, positions: int, d: int, grid: int = 1) -> int:
    """The float32 vectors of ``n_images`` images, ``positions`` of them per image, plus, for spatial input (a map of
    ``grid`` positions), the store's batch of float16 maps being read and its reshaped copy."""
    reading = LOAD_BATCH_ROWS * grid * d * 2 * 2 if grid > 1 else 0
    return n_images * positions * d * FLOAT32 + reading


def train_bytes(n_train: int, n_val: int, positions: int, d: int, n_latents: int, batch_size: int,
                grid: int = 1) -> int:
    """A training job (``train_sae``): the train and val vectors (``n_train``, ``n_val`` images of ``positions``
    vectors each, drawn from maps of ``grid`` positions), the geometric median's sample (up to 16,384 vectors, three
    copies), the model with its gradients and Adam's two moments (4 x the parameters), one step's dense
    pre-activations (batch x n_latents float32, at most three copies: the ReLU's input and output, or the AuxK mask;
    BatchTopK's masks are bytes), and one encoder batch of the evaluation."""
    vectors = n_train * positions
    return (vectors_bytes(n_train, positions, d, grid) + vectors_bytes(n_val, positions, d, grid)
            + 3 * min(vectors, 16384) * d * FLOAT32 + 4 * model_bytes(d, n_latents)
            + 3 * min(batch_size, vectors) * n_latents * FLOAT32 + CHUNK_BYTES)


def analysis_bytes(n_images: int, positions: int, d: int, n_latents: int, n_indicators: int) -> int:
    """An analysis job (``analyse_sae``): the vectors (every one of the ``positions`` per image), the model twice
    (as built, and as loaded from its file; or, before the trained SAE is loaded, its two controls), the scores (images x n_latents float32), one encoder batch or analysis
    chunk, the AUROC table (n_latents x indicators float64) and the latent table, and the top-image grid."""
    return (vectors_bytes(n_images, positions, d, positions) + 2 * model_bytes(d, n_latents)
            + n_images * n_latents * FLOAT32 + CHUNK_BYTES
            + n_latents * (n_indicators * FLOAT64 + TABLE_BYTES_PER_LATENT) + GRID_BYTES)


# ---- sizes a job will read ----------------------------------------------------------------------------------------
def indicator_values(values) -> list[str]:
    """The values of a row-table column that get a 0/1 indicator (``analysis.indicator_columns``): every defined
    value (not "" or "-1"), or just "1" for a 0/1 column."""
    distinct = sorted(set(values) - {"", "-1"})
    return ["1"] if set(distinct) <= {"0", "1"} and distinct else distinct


def dataset_sizes(dataset_json: str | Path) -> dict:
    """{"splits": {split: rows}, "indicators": indicator columns of label and the attributes} of a built data set
    (its ``dataset.json`` and ``samples.csv``); an upper bound of what the feature store gives a split (it drops
    the rows of images that could not be read)."""
    path = Path(dataset_json)
    return dict(_dataset_sizes(str(path), path.stat().st_mtime_ns, (path.parent / "samples.csv").stat().st_mtime_ns))


@lru_cache(maxsize=64)
def _dataset_sizes(dataset_json: str, *mtimes) -> tuple:
    meta = json.loads(Path(dataset_json).read_text())
    columns = ["label"] + list(meta.get("attributes", []))
    splits: dict[str, int] = {}
    values: dict[str, set] = {c: set() for c in columns}
    with open(Path(dataset_json).parent / "samples.csv", newline="") as f:
        for row in csv.DictReader(f):
            splits[row["split"]] = splits.get(row["split"], 0) + 1
            for c in columns:
                values[c].add(row.get(c, ""))
    return (("splits", splits), ("indicators", sum(len(indicator_values(v)) for v in values.values())))


def job_sizes(entry: dict, dataset: dict, input: str, train_positions: int) -> dict:
    """Keyword sizes of ``train_bytes`` (``split`` "train") or ``analysis_bytes`` (another split, or "train" read
    whole) from an extraction index entry (channels, map shape) and ``dataset_sizes``: pooled input has one vector
    per image; spatial input every map position for the analysis, ``train_positions`` of them for training."""
    d = int(entry["channels"])
    grid = math.prod(int(v) for v in entry["map_shape"]) // d if input == "spatial" else 1
    return {"d": d, "grid": grid, "train_positions": min(train_positions, grid),
            "images": {s: int(n) for s, n in dataset["splits"].items()}, "indicators": int(dataset["indicators"])}


def train_job_bytes(sizes: dict, expansion: int, batch_size: int) -> int:
    """``train_bytes`` of a run (``expansion``, ``batch_size``) on the sizes of ``job_sizes``."""
    return train_bytes(sizes["images"].get("train", 0), sizes["images"].get("val", 0), sizes["train_positions"],
                       sizes["d"], expansion * sizes["d"], batch_size, sizes["grid"])


def analysis_job_bytes(sizes: dict, expansion: int, split: str) -> int:
    """``analysis_bytes`` of a run (``expansion``) read on ``split``, on the sizes of ``job_sizes``."""
    return analysis_bytes(sizes["images"].get(split, 0), sizes["grid"], sizes["d"], expansion * sizes["d"],
                          sizes["indicators"])
