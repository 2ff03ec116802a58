"""What the localization jobs hold in memory, in MB (10^6 bytes), besides the model's weights and the Python process
(``difflens.resources`` adds those). Pure Python: the Snakefile computes a job's request from its shard plan
(``localize/plan.json``) when the job is ready.

A ``localize_words`` job holds, for one shard of ``rows`` word rows:

* its finished rows: every row's latent-grid maps (``MAP_KINDS`` float32 maps of ``(R / 8)^2``), totals and IoU
  curves (``CURVE_METHODS`` x thresholds, float64), twice (the partial file's records read back and stacked);
* one (image, caption) group's estimator tensors: ``n_draws`` x prompts (2 per word + caption + empty prompt)
  latents of ``LATENT_CHANNELS`` x ``(R / 8)^2`` float32, ``ESTIMATOR_COPIES`` times (predictions, errors,
  pixel-wise terms);
* the IoU step (``iou_step_bytes``): ``CHUNK_ROWS`` rows upsampled to the input grid (R x R) with their masks, and
  one row being counted. It does not grow with the number of rows.

The denoiser's activations are on the GPU the rule asks for. ``collect_localization`` holds every row's maps and
curves (``collect_held_mb``). A ``word_maps`` job holds what a shard job does for all of its rows, without curves
or the IoU step (``maps_held_mb``, from the data set's words.csv).
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

MB = 1e6
#: rows upsampled to the input resolution (and masks built) at once by ``info.localize.row_curves``
CHUNK_ROWS = 16
#: per chunk row and input pixel: the mi, cmi, attention_itd, attention_ddim and attention+cmi maps (float32, numpy
#: and torch's interpolation output), the combined map's per-row parts, the mask (bool)
CHUNK_BYTES_PER_PIXEL = 40
#: and per smaller draw count of a list: its mi, cmi, attention_itd and attention+cmi maps (float32, twice)
CHUNK_BYTES_PER_COUNT = 32
#: per input pixel, for the one row being counted: its normalised map and the first guess of its bins (float32),
#: each pixel's bin (int64), the thresholds compared with it (float32) and the comparisons (bool)
ROW_BYTES_PER_PIXEL = 32
#: latent-grid maps kept per row (mi, cmi, cmi_s, attention_itd, attention_ddim), float32, and per smaller draw
#: count of a list (infodecomp.n_draws) the maps that depend on the draws (mi, cmi, attention_itd)
MAP_KINDS, MAP_KINDS_PER_COUNT = 5, 3
#: maps scored against the masks (mi, cmi, attention_itd, attention_ddim, attention+cmi; per smaller draw count all
#: but attention_ddim): one IoU per threshold each, float64, on our grid and on the paper's (PAPER_THRESHOLDS)
CURVE_METHODS, CURVE_METHODS_PER_COUNT = 5, 4
#: the paper's threshold grid (``localize.PAPER_GRID``)
PAPER_THRESHOLDS = 50
#: latent channels (Stable Diffusion's VAE; the shapes model's 12 channels on 16 x 16 are a few MB at any count)
LATENT_CHANNELS = 4
#: estimator tensors alive at once, in units of (draws x prompts x latent values)
ESTIMATOR_COPIES = 8


def latent_side(resolution: int) -> int:
    """Side of the latent grid of a model fed ``resolution`` px images (the VAE's factor 8)."""
    return max(1, int(resolution) // 8)


def row_bytes(resolution: int, n_thresholds: int, extra_counts: int = 0) -> int:
    """Bytes one finished row holds: its latent-grid maps, two totals, its IoU curves (none without thresholds: no
    masks) and mask share, its row key; ``extra_counts``: the smaller draw counts of a list."""
    maps = (MAP_KINDS + MAP_KINDS_PER_COUNT * extra_counts) * latent_side(resolution) ** 2 * 4
    grids = n_thresholds + PAPER_THRESHOLDS if n_thresholds else 0
    return maps + 2 * 4 + (CURVE_METHODS + CURVE_METHODS_PER_COUNT * extra_counts) * grids * 8 + 8 + 8


def iou_step_bytes(resolution: int, chunk_rows: int = CHUNK_ROWS, extra_counts: int = 0) -> int:
    """Peak bytes of the IoU step on top of its results: ``chunk_rows`` rows on the R x R input grid (their maps at
    every draw count: ``extra_counts`` smaller counts add ``CHUNK_BYTES_PER_COUNT`` each), one row being counted."""
    per_pixel = CHUNK_BYTES_PER_PIXEL + CHUNK_BYTES_PER_COUNT * extra_counts
    return int(resolution) ** 2 * (chunk_rows * per_pixel + ROW_BYTES_PER_PIXEL)


def estimator_bytes(resolution: int, n_draws: int, words_per_caption: int) -> int:
    """Peak bytes of the estimator on one (image, caption) group of ``words_per_caption`` words."""
    prompts = 2 * words_per_caption + 2
    return ESTIMATOR_COPIES * n_draws * prompts * LATENT_CHANNELS * latent_side(resolution) ** 2 * 4


def read_plan(path: str | Path) -> dict:
    """A shard plan written by the ``plan_localization`` rule (``info.localize_shards.shard_plan``)."""
    return json.loads(Path(path).read_text())


def shard_held_mb(plan_path: str | Path, shard: int, resolution: int, n_draws: int, n_thresholds: int,
                  extra_counts: int = 0) -> float:
    """MB a ``localize_words`` job holds for shard ``shard`` of a plan: its finished rows twice (read back, stacked),
    one (image, caption) group's estimator tensors, the IoU step."""
    planned = read_plan(plan_path)["shards"][int(shard)]
    held = 2 * int(planned["rows"]) * row_bytes(resolution, n_thresholds, extra_counts)
    held += estimator_bytes(resolution, n_draws, int(planned["max_words_per_caption"]))
    return (held + iou_step_bytes(resolution, extra_counts=extra_counts)) / MB


def collect_held_mb(plan_path: str | Path, resolution: int, n_thresholds: int, extra_counts: int = 0) -> float:
    """MB ``collect_localization`` holds: every row's maps and curves three times (the shards read, joined, and the
    compressed output's buffers), and its per-row table (about 1 kB a row in pandas)."""
    return read_plan(plan_path)["n_rows"] * (3 * row_bytes(resolution, n_thresholds, extra_counts) + 1000) / MB


def maps_held_mb(words_csv: str | Path, max_images: int, resolution: int, n_draws: int) -> float:
    """MB a ``word_maps`` job holds: the maps of the rows of the ``max_images`` images with the most words (0: every
    image) twice (read back, stacked), and the estimator tensors of the longest caption's words; 0 before the
    data set exists (a dry run: the request is computed again when the job is ready)."""
    if not Path(words_csv).is_file():
        return 0.0
    per_image, per_caption = Counter(), Counter()
    with open(words_csv, newline="") as f:
        for row in csv.DictReader(f):
            per_image[row["sample_id"]] += 1
            per_caption[(row["sample_id"], row["caption"])] += 1
    counts = sorted(per_image.values(), reverse=True)
    rows = sum(counts[:max_images] if max_images else counts)
    held = 2 * rows * row_bytes(resolution, 0)
    return (held + estimator_bytes(resolution, n_draws, max(per_caption.values(), default=0))) / MB
