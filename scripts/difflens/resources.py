"""Memory requests of the jobs, from the sizes they will hold (pure Python: the Snakefile calls these when a job is
ready, so they may read its inputs: a model folder's safetensors headers, an extraction index).

Every estimate is ``BASE_MB`` (a Python process with torch, diffusers, transformers, h5py and pandas imported)
plus the job's own terms, each stated in the function that adds it, times ``HEADROOM``, times the attempt (a job
that runs out of memory is retried with more). Sizes are in MB (10^6 bytes), as Snakemake's ``mem_mb``.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

BASE_MB = 1500
HEADROOM = 1.25
MB = 1e6
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "auto": 4}  # auto: float32 on a CPU, the larger
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def request_mb(terms_mb: float, attempt: int = 1) -> int:
    """``BASE_MB`` + the job's terms, with headroom, times the attempt, rounded up to 100 MB."""
    return int(math.ceil((BASE_MB + terms_mb) * HEADROOM * max(1, int(attempt)) / 100) * 100)


def parameter_count(folder: str | Path) -> int:
    """Parameters of every ``*.safetensors`` file under a model folder, read from the files' headers alone (no
    weights are loaded); 0 for a folder without any (a model that is still to be fetched)."""
    total = 0
    for path in sorted(Path(folder).rglob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def weights_mb(folder: str | Path, dtype: str = "float32") -> float:
    """The model's parameters in the compute dtype (``auto`` counted as float32, its CPU choice)."""
    return parameter_count(folder) * _DTYPE_BYTES.get(dtype, 4) / MB


def denoiser_working_mb(resolution: int, batch: int, dtype: str = "float32") -> float:
    """Activations of a UNet / DiT forward pass on ``batch`` images of ``resolution`` px: per image, the attention
    probabilities of the largest self-attention (8 heads over (R/8)^2 latent tokens, squared) and ~2,000 feature
    values per latent pixel (the convolutions' inputs and outputs held for the skip connections)."""
    tokens = (resolution // 8) ** 2
    per_image = 8 * tokens ** 2 + 2000 * tokens
    return batch * per_image * _DTYPE_BYTES.get(dtype, 4) / MB


def index_entries(index: str | Path, layer: str | None = None, timestep: int | None = None) -> list[dict]:
    """Entries of an extraction index (``extract.store.write_index``), optionally those of one layer / timestep."""
    entries = json.loads(Path(index).read_text())["entries"]
    return [e for e in entries if (layer is None or e["layer"] == layer)
            and (timestep is None or int(e["timestep"]) == int(timestep))]


def map_values(entry: dict) -> int:
    """Values in one row's map (C x H x W) of an index entry."""
    return math.prod(int(v) for v in entry["map_shape"])


def extraction_mb(folder, dtype: str, resolution: int, batch: int, maps_per_image_values: int,
                  attempt: int = 1, on_cpu: bool = True) -> int:
    """An extraction job: the model, a denoiser batch (every timestep of a batch in one pass counts as ``batch``
    images) when it runs on the CPU (on a GPU its activations are in the GPU's memory), and the batch's outputs
    (float32) before they are written."""
    terms = weights_mb(folder, dtype) + (denoiser_working_mb(resolution, batch, dtype) if on_cpu else 0.0)
    return request_mb(terms + batch * maps_per_image_values * 4 / MB, attempt)


def model_job_mb(folder, dtype: str, resolution: int, batch: int, held_mb: float = 0.0, attempt: int = 1,
                 on_cpu: bool = True) -> int:
    """A job that runs the model (Diff-C on the fly, PCA views, information estimators): the model, one denoiser
    batch when it runs on the CPU, and what the job holds besides (``held_mb``)."""
    working = denoiser_working_mb(resolution, batch, dtype) if on_cpu else 0.0
    return request_mb(weights_mb(folder, dtype) + working + held_mb, attempt)


def pooled_table_mb(index, attempt: int = 1) -> int:
    """Linear probes: the largest (rows x channels) pooled table, in float64 with four working copies (the
    standardised features and the solver's)."""
    entries = index_entries(index)
    largest = max((int(e["n_rows"]) * int(e["channels"]) for e in entries), default=0)
    return request_mb(largest * 8 * 4 / MB, attempt)


def cached_maps_mb(entry: dict, limit_gb: float) -> float:
    """Diff-C's cached maps in memory: every split of the layer (float16) when they fit in the cache limit with a
    quarter to spare (``classify.sources.CachedMaps``), plus one slice being read; 0 when they are not saved or do
    not fit (then they are read row by row)."""
    total = int(entry["n_valid"]) * map_values(entry) * 2
    if not entry.get("maps") or total * 1.25 > limit_gb * 2 ** 30:
        return 0.0
    return (total + 256 * map_values(entry) * 2) / MB


def native_resolution(folder: str | Path, default: int = 512) -> int:
    """Image side a model folder was built for: a shapes model's ``image_size`` (its model card), else its
    denoiser's latent ``sample_size`` x 8 (the VAE's factor), or ``default`` when the folder has no such config
    (yet)."""
    card = Path(folder) / "difflens_model.json"
    if card.is_file():
        size = json.loads(card.read_text()).get("train_config", {}).get("arch", {}).get("image_size")
        if isinstance(size, int):
            return size
    for sub in ("unet", "transformer"):
        path = Path(folder) / sub / "config.json"
        if path.is_file():
            size = json.loads(path.read_text()).get("sample_size")
            if isinstance(size, int):
                return size * 8
    return default


def diffc_head_mb(channels: int, map_pixels: int, width: int, batch: int) -> float:
    """One Diff-C classifier in training: its parameters with their gradients and AdamW's two moments (16 bytes per
    parameter), and a batch's activations kept for the backward pass (the input and about 12 width-wide maps at the
    input's size, float32)."""
    params = channels * width * 9 + 3 * width * width * 9 + 8 * width
    return (params * 16 + batch * (channels + 12 * width) * map_pixels * 4) / MB


def diffc_grouping(n_timesteps: int, n_layers: int, head_mb: float, budget_gb: float) -> str:
    """``all`` when every layer x timestep's classifier fits in ``budget_gb``, else ``timestep`` when one
    timestep's do, else ``none``."""
    if n_timesteps * n_layers * head_mb <= budget_gb * 1e3:
        return "all"
    return "timestep" if n_layers * head_mb <= budget_gb * 1e3 else "none"


def diffc_group(classify: dict, grid: list, resolution: int) -> str:
    """``classify.group`` of a model whose Diff-C grid is ``grid`` ((timestep, layer) pairs) at ``resolution`` px:
    ``auto`` resolved by ``diffc_grouping`` for the largest map a layer can give (1280 channels on the latent
    grid)."""
    if classify["group"] != "auto":
        return classify["group"]
    head = diffc_head_mb(1280, (int(resolution) // 8) ** 2, classify["width"], classify["batch_size"])
    return diffc_grouping(len({t for t, _ in grid}), len({layer for _, layer in grid}), head,
                          classify["group_memory_gb"])


def diffc_heads_per_job(group: str, grid: list) -> int:
    """Classifiers one Diff-C job trains under ``group`` (per target)."""
    if group == "all":
        return len(grid)
    return len({layer for _, layer in grid}) if group == "timestep" else 1
