"""Bring your own images: one subfolder per class, optionally a captions CSV.

``<path>/<class name>/<image file>``; captions CSV (optional) with columns ``image`` (path relative to ``<path>``)
and ``caption``. Without captions, ``caption_template`` (default "a photo of a {label}") makes them from the class
name. Splits are drawn with a seed. Images are referenced in place (relative paths), not copied.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .common import DatasetError, seeded_splits, write_dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def convert(path: str | Path, out_dir: str | Path, seed: int = 0, captions: str | None = None,
            caption_template: str = "a photo of a {label}",
            split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), name: str = "imagefolder") -> Path:
    src, out = Path(path).resolve(), Path(out_dir)
    if not src.is_dir():
        raise DatasetError(f"{name}: image folder {src} does not exist")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{name}: {src} has no class subfolders (expected <path>/<class>/<image>)")
    files = [(c, f) for c in classes for f in sorted((src / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(f"{name}: no image files ({sorted(IMAGE_SUFFIXES)}) under {src}")
    given = {}
    if captions:
        table = pd.read_csv(src / captions if not Path(captions).is_absolute() else captions, keep_default_na=False)
        if not {"image", "caption"} <= set(table.columns):
            raise DatasetError(f"{name}: captions file {captions} needs columns 'image' and 'caption'")
        given = dict(zip(table["image"], table["caption"]))
    out.mkdir(parents=True, exist_ok=True)
    splits = seeded_splits(len(files), seed, split_fractions)
    rows = []
    for (label_name, f), split in zip(files, splits):
        rel_src = f"{label_name}/{f.name}"
        rows.append({"sample_id": f"{label_name}/{f.stem}", "split": split, "label": classes.index(label_name),
                     "label_name": label_name, "image": os.path.relpath(f, out),
                     "caption": given.get(rel_src, caption_template.format(label=label_name))})
    return write_dataset(out, name=name, source=f"imagefolder {src}", samples=pd.DataFrame(rows), classes=classes)
