"""FGVC-Aircraft 2013b from the layout torchvision downloads: ``<raw_dir>/fgvc-aircraft-2013b/data/``.

``images/<id>.jpg``; ``images_<level>_<split>.txt`` with lines ``<id> <label, may contain spaces>``; the class
list ``variants.txt`` / ``families.txt`` / ``manufacturers.txt`` (one name a line, in label order). The published
train/val/test splits are kept. Images keep the source's 20-pixel copyright banner at the bottom, as torchvision.
"""
from __future__ import annotations

from pathlib import Path

from .common import DatasetError
from .sources import read_lines, require_dir, torchvision_download, write_classification

BASE = "fgvc-aircraft-2013b/data"
CLASS_FILES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
SPLIT_FILES = {"train": "train", "val": "val", "test": "test"}


def download(raw_dir: Path) -> None:
    """torchvision's FGVCAircraft fetches the archive into ``raw_dir``."""
    torchvision_download("FGVCAircraft", raw_dir)


def read_labelled_list(path: Path, class_index: dict[str, int]) -> list[dict]:
    """``<image id> <class name>`` lines as records; the name must be one of the known classes."""
    rows = []
    for no, line in read_lines(path):
        image_id, _, name = line.partition(" ")
        name = name.strip()
        if name not in class_index:
            raise DatasetError(f"{path}:{no}: sample {image_id!r}: label {name!r} is not in the class list")
        rows.append({"sample_id": image_id, "label": class_index[name], "image": f"{image_id}.jpg"})
    return rows


def convert(raw_dir: Path, out_dir: Path, seed: int, annotation_level: str = "variant",
            caption_template: str = "a photo of a {}", class_names: list[str] | None = None,
            link: str = "symlink") -> Path:
    """``seed`` is unused: the splits are the published ones."""
    if annotation_level not in CLASS_FILES:
        raise ValueError(f"aircraft.annotation_level must be one of {list(CLASS_FILES)}, got {annotation_level!r}")
    base = require_dir(Path(raw_dir) / BASE, "FGVC-Aircraft data folder")
    classes = [line for _, line in read_lines(base / CLASS_FILES[annotation_level])]
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{base / CLASS_FILES[annotation_level]}: duplicate class names")
    index = {name: i for i, name in enumerate(classes)}
    records, seen = [], {}
    for split, tag in SPLIT_FILES.items():
        path = base / f"images_{annotation_level}_{tag}.txt"
        for rec in read_labelled_list(path, index):
            if rec["sample_id"] in seen:
                raise DatasetError(f"{path}: sample {rec['sample_id']!r} is also in the {seen[rec['sample_id']]} "
                                   "split")
            seen[rec["sample_id"]] = split
            records.append({**rec, "split": split})
    return write_classification(Path(out_dir), name="aircraft",
                                source=f"FGVC-Aircraft 2013b, {annotation_level} level (torchvision layout)",
                                image_root=base / "images", records=records, classes=classes,
                                caption_template=caption_template, class_names=class_names, link=link)
