"""Bring your own images: one subfolder per class, optionally a captions CSV.

``<path>/<class name>/<image file>``; captions CSV (optional) with columns ``image`` (path relative to ``<path>``,
``<class name>/<image file>``) and ``caption``. Without captions, ``caption_template`` (default "a photo of a
{label}") makes them from the class name. A captions CSV must match the images one to one: rows naming no image and
images without a row are a DatasetError (with counts and examples), unless ``allow_missing_captions`` is true - then
one warning gives the counts, and images without a row get the template caption. Splits are drawn with a seed.
Images are referenced in place (relative paths), not copied.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from .common import DatasetError, seeded_splits, write_dataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
N_EXAMPLES = 3


def read_captions(src: Path, captions: str, name: str) -> dict[str, str]:
    """Image path (relative to ``src``) -> caption, from the CSV ``captions`` (relative to ``src`` or absolute)."""
    table = pd.read_csv(src / captions if not Path(captions).is_absolute() else captions, keep_default_na=False)
    if not {"image", "caption"} <= set(table.columns):
        raise DatasetError(f"{name}: captions file {captions} needs columns 'image' and 'caption'")
    return dict(zip(table["image"].astype(str), table["caption"]))


def check_captions(given: dict[str, str], images: list[str], captions: str, name: str,
                   allow_missing: bool) -> None:
    """DatasetError unless the captions name exactly the images (counts and a few examples of each mismatch);
    with ``allow_missing`` a single warning with the counts instead."""
    known = set(images)
    orphans = [p for p in given if p not in known]
    uncaptioned = [p for p in images if p not in given]
    if not orphans and not uncaptioned:
        return
    detail = (f"{len(orphans)} caption row(s) name no image (e.g. {orphans[:N_EXAMPLES]}), {len(uncaptioned)} "
              f"image(s) have no caption row (e.g. {uncaptioned[:N_EXAMPLES]})")
    if not allow_missing:
        raise DatasetError(f"{name}: captions file {captions} does not match the images: {detail}. The image column "
                           "holds paths relative to the folder (<class>/<file>); set allow_missing_captions: true "
                           "to give images without a row the caption_template caption")
    log.warning("%s: captions file %s: %s; those images get the caption_template caption", name, captions, detail)


def convert(path: str | Path, out_dir: str | Path, seed: int = 0, captions: str | None = None,
            caption_template: str = "a photo of a {label}",
            split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), name: str = "imagefolder",
            allow_missing_captions: bool = False) -> Path:
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
        given = read_captions(src, captions, name)
        check_captions(given, [f"{c}/{f.name}" for c, f in files], captions, name, allow_missing_captions)
    out.mkdir(parents=True, exist_ok=True)
    splits = seeded_splits(len(files), seed, split_fractions)
    rows = []
    for (label_name, f), split in zip(files, splits):
        rel_src = f"{label_name}/{f.name}"
        rows.append({"sample_id": f"{label_name}/{f.stem}", "split": split, "label": classes.index(label_name),
                     "label_name": label_name, "image": os.path.relpath(f, out),
                     "caption": given.get(rel_src, caption_template.format(label=label_name))})
    return write_dataset(out, name=name, source=f"imagefolder {src}", samples=pd.DataFrame(rows), classes=classes)
