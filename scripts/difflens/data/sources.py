"""Real data sources: the registry of download/convert functions, and the helpers the converters share.

Every source has a pair of functions with one signature each:

``download(raw_dir: Path, **params) -> None``
    fetch the source's files, in the layout its publisher (or torchvision) leaves them, into ``raw_dir``.
``convert(raw_dir: Path, out_dir: Path, seed: int, **params) -> Path``
    read those files and write the data set in the common form (:mod:`difflens.data.common`) under ``out_dir``;
    returns the ``dataset.json`` path.

``SOURCES`` maps each data set name to that pair. Several data sets share one raw download (``RAW_NAMES``):
VG-Relation and VG-Attribution use the same images, COCO-IT, COCO100-IT and COCO-WL the same COCO val2017 files.
The converter modules (and torchvision) are imported only when a function is called, so a Snakefile can import
this module cheaply to list names.

Converted data sets reference their images through ``<out_dir>/images``: by default a relative symlink to the raw
image folder (nothing is copied); ``link="copy"`` copies only the images the data set uses instead. (ARO's VG
sets are the exception: their images are crops, written under ``<out_dir>/crops``.)
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .common import DatasetError, seeded_splits, write_dataset

log = logging.getLogger(__name__)

LINK_MODES = ("symlink", "copy")
IMAGE_DIR = "images"

# ----------------------------------------------------------------------------------------------------------------
# downloading


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gdrive_url(file_id: str) -> str:
    """A direct-download URL for a public Google Drive file (skips the virus-scan page of large files)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _length(resp) -> int | None:
    size = resp.headers.get("Content-Length") if resp.headers else None
    return int(size) if size and size.isdigit() else None


def fetch_url(url: str, dest: str | Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (via a ``.part`` file), checking ``md5`` when given.

    An existing ``dest`` is kept when its checksum matches (or when no checksum is known).
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        log.info("%s already present", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.md5()
    req = urllib.request.Request(url, headers={"User-Agent": "difflens-downloader"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            ctype = resp.headers.get("Content-Type", "") if resp.headers else ""
            if "text/html" in ctype and not dest.name.endswith((".html", ".htm")):
                raise DatasetError(f"{url}: server sent an HTML page instead of {dest.name} "
                                   "(quota exceeded or login required?)")
            with tqdm(total=_length(resp), unit="B", unit_scale=True, desc=dest.name, mininterval=5) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if md5 is not None and h.hexdigest() != md5:
        tmp.unlink()
        raise DatasetError(f"{dest.name}: md5 {h.hexdigest()} does not match the expected {md5} (from {url})")
    os.replace(tmp, dest)
    return dest


def extract_archive(archive: str | Path, dest_dir: str | Path, remove: bool = False) -> None:
    """Extract a .zip or .tar(.gz) archive into ``dest_dir``; refuses members that would land outside it.

    A marker ``.<archive name>.extracted`` records completion, so a second call does nothing.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = dest_dir / f".{archive.name}.extracted"
    if marker.is_file():
        return
    root = dest_dir.resolve()

    def check(name: str) -> None:
        if not (root / name).resolve().is_relative_to(root):
            raise DatasetError(f"{archive}: member {name!r} would be extracted outside {dest_dir}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                check(name)
            zf.extractall(dest_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                check(member.name)
            tf.extractall(dest_dir, filter="data")
    else:
        raise DatasetError(f"{archive}: neither a zip nor a tar archive")
    marker.write_text("ok\n")
    if remove:
        archive.unlink()


@dataclass(frozen=True)
class Remote:
    """One published file: where it lives, the name to save it under, and its md5 when known."""

    url: str
    filename: str
    md5: str | None = None
    extract: bool = False


def fetch_all(remotes: Iterable[Remote], raw_dir: Path, md5: dict[str, str] | None = None,
              keep_archives: bool = True) -> None:
    """Download (and extract) each remote into ``raw_dir``; ``md5`` overrides or supplies checksums by filename."""
    md5 = md5 or {}
    raw_dir.mkdir(parents=True, exist_ok=True)
    for r in remotes:
        if r.extract and (raw_dir / f".{r.filename}.extracted").is_file():
            continue
        path = fetch_url(r.url, raw_dir / r.filename, md5.get(r.filename, r.md5))
        if r.extract:
            extract_archive(path, raw_dir, remove=not keep_archives)


def torchvision_download(class_name: str, raw_dir: str | Path, **kwargs) -> None:
    """Let a torchvision data set class fetch (and md5-check) its own files into ``raw_dir``."""
    import torchvision.datasets as tvd  # heavy import, only when downloading

    Path(raw_dir).mkdir(parents=True, exist_ok=True)
    getattr(tvd, class_name)(root=str(raw_dir), download=True, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# reading raw files


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: missing {what} (has the download step finished?)")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: missing {what} (has the download step finished?)")
    return path


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty, non-comment (``#``) lines of a text file."""
    out = []
    for no, line in enumerate(require_file(path, "list file").read_text().splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((no, line))
    return out


# ----------------------------------------------------------------------------------------------------------------
# writing


def place_images(src_dir: Path, rel_paths: Sequence[str], out_dir: Path, link: str = "symlink") -> list[str]:
    """Make the images ``src_dir/<rel>`` reachable as ``out_dir/images/<rel>``; returns those relative paths.

    ``symlink``: ``out_dir/images`` becomes one relative symlink to ``src_dir`` (no copying).
    ``copy``: only the listed files are copied (for small subsets, or file systems without symlinks).
    """
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {list(LINK_MODES)}, got {link!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / IMAGE_DIR
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    if link == "symlink":
        dest.symlink_to(os.path.relpath(src_dir.resolve(), out_dir.resolve()), target_is_directory=True)
    else:
        for rel in tqdm(sorted(set(rel_paths)), desc="copy images", mininterval=5):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_dir / rel, target)
    return [f"{IMAGE_DIR}/{rel}" for rel in rel_paths]


def readable(name: str) -> str:
    """A class name as words for a caption: ``car_side`` -> ``car side``."""
    return " ".join(name.replace("_", " ").split())


def caption_for(name: str, template: str = "a photo of a {}") -> str:
    """Fill the caption template with the readable class name, turning "a {}" into "an {}" before a vowel."""
    if "{}" not in template:
        raise ValueError(f"caption_template must contain '{{}}', got {template!r}")
    words = readable(name)
    if words[:1].lower() in "aeiou" and "a {}" in template:
        template = template.replace("a {}", "an {}", 1)
    return template.format(words)


def _sub_seed(seed: int, key: int) -> int:
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


def stratified_holdout(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Bool mask choosing ``round(fraction * n_c)`` items of every class ``c`` (at least one if ``fraction > 0``
    and the class has two or more items), reproducibly for a seed."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    out = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and k == 0 and len(idx) >= 2:
            k = 1
        chosen = np.random.default_rng(_sub_seed(seed, int(c))).permutation(idx)[:k]
        out[chosen] = True
    return out


def stratified_splits(labels: Sequence[int], seed: int, fractions: Sequence[float]) -> list[str]:
    """train/val/test per item: :func:`common.seeded_splits` applied within each class."""
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out[idx] = seeded_splits(len(idx), _sub_seed(seed, int(c)), tuple(float(f) for f in fractions))
    return list(out)


def write_classification(out_dir: Path, *, name: str, source: str, image_root: Path, records: list[dict],
                         classes: list[str], caption_template: str = "a photo of a {}",
                         class_names: list[str] | None = None, link: str = "symlink") -> Path:
    """Write a classification data set from ``records`` (dicts with ``sample_id``, ``split``, ``label``, ``image``
    relative to ``image_root``, plus any extra columns). ``class_names`` replaces the names used in captions."""
    if class_names is not None and len(class_names) != len(classes):
        raise ValueError(f"{name}: class_names has {len(class_names)} names, the source has {len(classes)} classes")
    if not records:
        raise DatasetError(f"{name}: no samples found under {image_root}")
    shown = list(class_names) if class_names is not None else classes
    df = pd.DataFrame(records)
    df["image"] = place_images(image_root, list(df["image"]), out_dir, link)
    df["label"] = df["label"].astype(int)
    df["label_name"] = [classes[i] for i in df["label"]]
    df["caption"] = [caption_for(shown[i], caption_template) for i in df["label"]]
    counts = df["split"].value_counts().to_dict()
    log.info("%s: %d samples %s, %d classes", name, len(df), counts, len(classes))
    return write_dataset(out_dir, name=name, source=source, samples=df, classes=classes)


# ----------------------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class _Ref:
    """A function of a converter module, imported on first use."""

    module: str
    attr: str

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.attr)

    def __call__(self, *args, **kwargs):
        """Call the function; an unknown keyword gets a ValueError listing the allowed options."""
        fn = self.resolve()
        params = inspect.signature(fn).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = [p for p, v in params.items() if v.default is not inspect.Parameter.empty]
            raise ValueError(f"{self.module}.{self.attr}: unknown parameter(s) {unknown}; allowed: {allowed}")
        return fn(*args, **kwargs)


SOURCES: dict[str, tuple[_Ref, _Ref]] = {
    "pets": (_Ref("pets", "download"), _Ref("pets", "convert")),
    "caltech101": (_Ref("caltech", "download"), _Ref("caltech", "convert")),
    "aircraft": (_Ref("aircraft", "download"), _Ref("aircraft", "convert")),
    "flowers102": (_Ref("flowers", "download"), _Ref("flowers", "convert")),
    "aro_vg_relation": (_Ref("aro", "download_vg"), _Ref("aro", "convert_vg_relation")),
    "aro_vg_attribution": (_Ref("aro", "download_vg"), _Ref("aro", "convert_vg_attribution")),
    "aro_coco_order": (_Ref("aro", "download_coco_order"), _Ref("aro", "convert_coco_order")),
    "aro_flickr_order": (_Ref("aro", "download_flickr_order"), _Ref("aro", "convert_flickr_order")),
    "coco_it": (_Ref("coco", "download"), _Ref("coco", "convert_coco_it")),
    "coco100_it": (_Ref("coco", "download"), _Ref("coco", "convert_coco100_it")),
    "coco_wl": (_Ref("coco", "download"), _Ref("coco", "convert_coco_wl")),
}

# data sets that can share one raw folder (``results/raw/<raw name>``); a data set not listed uses its own name
RAW_NAMES: dict[str, str] = {
    "aro_vg_relation": "aro_vg",
    "aro_vg_attribution": "aro_vg",
    "coco_it": "coco2017",
    "coco100_it": "coco2017",
    "coco_wl": "coco2017",
}


def names() -> list[str]:
    return list(SOURCES)


def raw_name(dataset: str) -> str:
    """The raw folder name of a data set (shared by data sets built from the same download)."""
    _entry(dataset)
    return RAW_NAMES.get(dataset, dataset)


def _entry(name: str) -> tuple[_Ref, _Ref]:
    if name in SOURCES:
        return SOURCES[name]
    for dataset, raw in RAW_NAMES.items():
        if raw == name:
            return SOURCES[dataset]
    raise ValueError(f"unknown data set {name!r}; known: {names()} (raw names: {sorted(set(RAW_NAMES.values()))})")


def download(name: str, raw_dir: str | Path, **params) -> None:
    """Download data set (or raw name) ``name`` into ``raw_dir``."""
    _entry(name)[0](Path(raw_dir), **params)


def convert(name: str, raw_dir: str | Path, out_dir: str | Path, seed: int = 0, **params) -> Path:
    """Convert data set ``name`` from ``raw_dir`` into the common form under ``out_dir``; returns dataset.json."""
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {names()}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return SOURCES[name][1](Path(raw_dir), out_dir, int(seed), **params)
