"""Reading the other stages' outputs for the figures: every reader checks that its file exists and, when it does not,
says which rule makes it and how to build it (``snakemake <path>``), so a figure never fails on a bare
FileNotFoundError, in a rule or in a notebook."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

#: file name pattern (on the path's end) -> the rule that writes it
PRODUCERS = [
    (r"steer/.+/(chosen\.csv|(control_)?effects\.csv|(control_)?correlations\.csv|items\.csv|images\.npz|grid\.png)$",
     "steer_latents"),
    (r"sae/[^/]+/[^/]+/summary\.csv$", "collect_sae"),
    (r"sae/.+/(latents\.csv|summary\.json|top_images\.png)$", "analyse_sae"),
    (r"sae/.+/(sae\.safetensors|sae_config\.json|curve\.csv)$", "train_sae"),
    (r"classify/[^/]+/[^/]+/accuracy\.csv$", "collect_accuracy"),
    (r"classify/.+/pca/t\d+/[^/]+\.png$", "pca_views"),
    (r"info/[^/]+/[^/]+/aro(_items)?\.csv$", "collect_aro"),
    (r"info/[^/]+/[^/]+/localization(_items\.csv|_maps\.npz|\.csv)$", "collect_localization"),
    (r"info/[^/]+/[^/]+/localize/shard-\d+\.npz$", "localize_words"),
    (r"info/[^/]+/[^/]+/localize/plan\.json$", "plan_localization"),
    (r"info/[^/]+/[^/]+/intervention(_items\.csv|_maps\.npz|\.csv)$", "intervene_words"),
    (r"info/[^/]+/[^/]+/word_maps\.(npz|csv|png)$", "word_maps"),
    (r"info/[^/]+/[^/]+/mmse_curves\.csv$", "mmse_curves"),
    (r"activations/[^/]+/[^/]+/index\.json$", "index_activations"),
    (r"data/[^/]+/dataset\.json$", "prepare_dataset"),
    (r"models/[^/]+/check\.json$", "check_model"),
    (r"figures/[^/]+/[^/]+\.(png|pdf|csv)$", "render_figure"),
]


class MissingInput(FileNotFoundError):
    """An input of a figure is missing; the message names the rule that makes it."""


def producer(path: str | Path) -> str | None:
    text = Path(path).as_posix()
    return next((rule for pattern, rule in PRODUCERS if re.search(pattern, text)), None)


def require(path: str | Path, needed_by: str = "this figure") -> Path:
    """``path`` as a Path if the file exists, else a ``MissingInput`` naming the rule that writes it."""
    path = Path(path)
    if not path.exists():
        rule = producer(path)
        how = f"rule {rule} makes it: run `snakemake {path}`" if rule else "no difflens rule makes it"
        raise MissingInput(f"{needed_by} needs {path}, which is missing; {how}")
    return path


def read_csv(path, needed_by: str = "this figure") -> pd.DataFrame:
    """A table with its ``sample_id`` column kept as text (zero-padded ids such as COCO's stay intact)."""
    return pd.read_csv(require(path, needed_by), dtype={"sample_id": str})


def read_json(path, needed_by: str = "this figure") -> dict:
    return json.loads(require(path, needed_by).read_text())


def read_npz(path, needed_by: str = "this figure") -> dict[str, np.ndarray]:
    with np.load(require(path, needed_by), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def concat_csv(paths, needed_by: str = "this figure", origin: bool = False) -> pd.DataFrame:
    """Several tables of the same kind (one per model and data set) as one; ``origin``: add the model and data set
    columns from the files' places under results/info/<model>/<data set>/ (those tables do not carry them)."""
    parts = [read_csv(p, needed_by).assign(**dict(zip(("model", "dataset"), info_folder(p)))) if origin
             else read_csv(p, needed_by) for p in paths]
    filled = [p for p in parts if not p.empty]
    if filled:
        return pd.concat(filled, ignore_index=True)
    return parts[0] if parts else pd.DataFrame()  # no rows: keep the columns


def info_folder(path) -> tuple[str, str]:
    """(model, data set) of a file under results/info/<model>/<data set>/."""
    parts = Path(path).parts
    i = len(parts) - 1 - parts[::-1].index("info")
    return parts[i + 1], parts[i + 2]


def dataset_root(results: str | Path, dataset: str) -> Path:
    """The prepared data set's folder (``Dataset.load`` reads it)."""
    return require(Path(results) / "data" / dataset / "dataset.json").parent
