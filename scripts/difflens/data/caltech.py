"""Caltech-101 from the layout torchvision downloads: ``<raw_dir>/caltech101/101_ObjectCategories/<class>/*.jpg``.

Classes are the sorted folder names without ``BACKGROUND_Google`` (as torchvision). Caltech-101 has no official
split: train/val/test are drawn per class with :func:`common.seeded_splits` in the proportions ``fractions``.
"""
from __future__ import annotations

from pathlib import Path

from .common import DatasetError
from .sources import require_dir, stratified_splits, torchvision_download, write_classification

BASE = "caltech101/101_ObjectCategories"
EXCLUDED = ("BACKGROUND_Google",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def download(raw_dir: Path) -> None:
    """torchvision's Caltech101 fetches and md5-checks the archive into ``raw_dir``."""
    torchvision_download("Caltech101", raw_dir)


def scan_class_folders(root: Path, exclude: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """Classes (sorted folder names) and one record per image file of an ``<class>/<image>`` tree."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in exclude)
    if not classes:
        raise DatasetError(f"{root}: no class folders")
    records = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{root / cls}: class {cls!r} has no images")
        records += [{"sample_id": f"{cls}-{f.stem}", "label": label, "image": f"{cls}/{f.name}"} for f in files]
    return classes, records


def convert(raw_dir: Path, out_dir: Path, seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
            caption_template: str = "a photo of a {}", class_names: list[str] | None = None,
            link: str = "symlink") -> Path:
    root = require_dir(Path(raw_dir) / BASE, "Caltech-101 category folders")
    classes, records = scan_class_folders(root, EXCLUDED)
    for rec, split in zip(records, stratified_splits([r["label"] for r in records], seed, fractions)):
        rec["split"] = split
    return write_classification(Path(out_dir), name="caltech101", source="Caltech-101 (torchvision layout)",
                                image_root=root, records=records, classes=classes,
                                caption_template=caption_template, class_names=class_names, link=link)
