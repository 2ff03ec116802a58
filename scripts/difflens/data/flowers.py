"""Oxford Flowers-102 from the layout torchvision downloads: ``<raw_dir>/flowers-102/``.

``jpg/image_<00001>.jpg``; ``imagelabels.mat`` (``labels``: class 1..102 of image i+1) and ``setid.mat``
(``trnid``, ``valid``, ``tstid``: 1-based image ids of the published train/val/test splits). The files carry
no class names: they come from torchvision's ``Flowers102.classes`` unless ``class_names`` is given.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from .common import DatasetError
from .sources import require_dir, require_file, torchvision_download, write_classification

BASE = "flowers-102"
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}

log = logging.getLogger(__name__)


def download(raw_dir: Path) -> None:
    """torchvision's Flowers102 fetches and md5-checks images, labels and splits into ``raw_dir``."""
    torchvision_download("Flowers102", raw_dir)


def _load_mat_vector(path: Path, key: str) -> np.ndarray:
    try:
        mat = loadmat(require_file(path, f"{key} file"), squeeze_me=True)
    except (ValueError, OSError, TypeError) as exc:
        raise DatasetError(f"{path}: cannot read as a MATLAB file: {exc}") from exc
    if key not in mat:
        raise DatasetError(f"{path}: no variable {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})")
    vec = np.atleast_1d(np.asarray(mat[key]))
    if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.number):
        raise DatasetError(f"{path}: {key!r} is not a numeric vector (shape {vec.shape}, dtype {vec.dtype})")
    return vec.astype(np.int64)


def default_class_names(n: int) -> list[str]:
    """torchvision's flower names when they match ``n`` classes, else ``flower <i>`` with a warning: the captions
    then name no flower (the ``class_names`` parameter gives the names)."""
    try:
        from torchvision.datasets import Flowers102

        names = list(getattr(Flowers102, "classes", []))
    except ImportError:
        names = []
    if len(names) == n:
        return names
    log.warning("flowers102: torchvision gives %d flower names for the %d classes: the labels are named 'flower 1' .. "
                "'flower %d' and the captions name no flower (the class_names parameter gives names)", len(names), n,
                n)
    return [f"flower {i + 1}" for i in range(n)]


def convert(raw_dir: Path, out_dir: Path, seed: int, caption_template: str = "a photo of a {}",
            class_names: list[str] | None = None, link: str = "symlink") -> Path:
    """``seed`` is unused: the splits are the published ones. ``class_names`` also become the label names."""
    base = require_dir(Path(raw_dir) / BASE, "Flowers-102 folder")
    labels = _load_mat_vector(base / "imagelabels.mat", "labels")
    if labels.min() < 1:
        raise DatasetError(f"{base / 'imagelabels.mat'}: labels must be 1-based, found {labels.min()}")
    n_classes = int(labels.max())
    classes = list(class_names) if class_names is not None else default_class_names(n_classes)
    if len(classes) != n_classes:
        raise ValueError(f"flowers102: class_names has {len(classes)} names, the labels have {n_classes} classes")
    records, seen = [], {}
    for split, key in SPLIT_KEYS.items():
        for image_id in _load_mat_vector(base / "setid.mat", key).tolist():
            sid = f"image_{image_id:05d}"
            if not 1 <= image_id <= len(labels):
                raise DatasetError(f"{base / 'setid.mat'}: {key}: sample {sid!r}: id {image_id} has no label "
                                   f"(imagelabels.mat has {len(labels)})")
            if sid in seen:
                raise DatasetError(f"{base / 'setid.mat'}: sample {sid!r} is in both {seen[sid]} and {key}")
            seen[sid] = key
            records.append({"sample_id": sid, "split": split, "label": int(labels[image_id - 1]) - 1,
                            "image": f"{sid}.jpg"})
    return write_classification(Path(out_dir), name="flowers102", source="Oxford Flowers-102 (torchvision layout)",
                                image_root=base / "jpg", records=records, classes=classes,
                                caption_template=caption_template, link=link)
