"""External baselines: image features of a pretrained vision model (CLIP, DINOv2, or any transformers image model)
under the same linear probe as the diffusion features.

The model is loaded with ``transformers.AutoModel`` and ``AutoImageProcessor`` from a hub id or a local folder; for
a model with an image tower beside a text tower (CLIP, SigLIP) the image tower alone is run. One feature vector per
image: the model's pooled output (CLIP: the post-layernorm class token; DINOv2: the layernormed class token), else
the mean of its last hidden states. Images are read from the data set, at the processor's own resolution.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..data.common import Dataset, DatasetError
from ..extract.store import ID_COLUMNS, target_columns

log = logging.getLogger(__name__)

class BaselineError(ValueError):
    """A baseline model cannot be loaded or run; the message names it."""


def load_image_encoder(source: str, *, device=None, local_files_only: bool = True):
    """(image processor, image model in eval mode on ``device``) of a transformers model folder or hub id."""
    from transformers import AutoImageProcessor, AutoModel

    try:
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_files_only)
        model = AutoModel.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise BaselineError(f"baseline model {source!r} could not be loaded as a transformers image model with an "
                            f"image processor ({type(exc).__name__}: {exc})") from None
    vision = getattr(model, "vision_model", model)  # CLIP / SigLIP: the image tower alone
    return processor, vision.eval().to(device or "cpu")


@torch.no_grad()
def image_features(processor, encoder, dataset: Dataset, *, batch_size: int = 32,
                   progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """(features (n, d) float32 of the images that could be read, in the data set's order; sample ids of those that
    could not, each logged)."""
    device = next(encoder.parameters()).device
    ids = list(dataset.samples["sample_id"])
    out, unreadable = [], []
    for start in tqdm(range(0, len(ids), batch_size), desc=f"image features {dataset.name}", disable=not progress,
                      mininterval=5):
        images = []
        for sid in ids[start:start + batch_size]:
            try:
                images.append(dataset.load_image(sid))
            except DatasetError as exc:  # a corrupt or missing file: left out, named in the log
                log.warning("%s; left out of the baseline", exc)
                unreadable.append(sid)
        if not images:
            continue
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        got = encoder(pixel_values=pixels)
        pooled = getattr(got, "pooler_output", None)
        pooled = got.last_hidden_state.mean(1) if pooled is None else pooled
        out.append(pooled.float().cpu().numpy())
    if not out:
        raise BaselineError(f"no image of data set {dataset.name!r} could be read")
    return np.concatenate(out), unreadable


def sample_rows(dataset: Dataset, unreadable: list[str] = ()) -> pd.DataFrame:
    """The data set's rows as the feature store lays them out (sample id, split, label, label name, attribute
    columns), without the unreadable samples."""
    rows = dataset.samples[list(ID_COLUMNS) + dataset.attributes]
    return rows[~rows["sample_id"].isin(set(unreadable))].reset_index(drop=True)


def baseline_probe_table(name: str, dataset: str, features: np.ndarray, rows: pd.DataFrame, targets: list[str], *,
                         seed: int = 0) -> pd.DataFrame:
    """Accuracy-table rows of linear probes on ``features`` (aligned with ``rows``) for each target (``[]``: label
    and every attribute column); model = ``name``, data set ``dataset``, layer ``image``, no timestep."""
    from .tables import ACCURACY_COLUMNS, SPLITS, probe_split_rows

    if len(features) != len(rows):
        raise BaselineError(f"baseline {name!r}: {len(features)} feature vectors for {len(rows)} rows")
    targets = list(targets) or target_columns(rows.columns)
    split = rows["split"].to_numpy()
    feats = {s: features[split == s] for s in SPLITS}
    parts = {s: rows[split == s].reset_index(drop=True) for s in SPLITS}
    meta = {"model": name, "dataset": dataset, "layer": "image", "timestep": None}
    return pd.DataFrame(probe_split_rows(feats, parts, targets, meta, seed=seed), columns=ACCURACY_COLUMNS)
