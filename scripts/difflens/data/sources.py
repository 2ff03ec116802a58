"""Helpers the real-source converters share: downloads, archives, image placement, splits, class tables.

The registry of sources (name -> download / convert, and the raw folders several data sets share) is
``difflens.data.registry``, re-exported here.

Converted data sets reference their images through ``<out_dir>/images``: by default a relative symlink to the raw
image folder (nothing is copied); ``link="copy"`` copies only the images the data set uses instead. (ARO's VG
sets are the exception: their images are crops, written under ``<out_dir>/crops``.)
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tarfile
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .common import DatasetError, seeded_splits, write_dataset

log = logging.getLogger(__name__)

LINK_MODES = ("symlink", "copy")
IMAGE_DIR = "images"

# ----------------------------------------------------------------------------------------------------------------
# downloading


def gdrive_url(file_id: str) -> str:
    """A direct-download URL for a public Google Drive file (skips the virus-scan page of large files)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@contextmanager
def _socket_timeout(seconds: float | None):
    """Set the default timeout of new sockets for the block (torchvision's ``download_url`` takes no timeout)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _refuse_html(path: Path, url: str, name: str) -> None:
    """DatasetError when a download that is not meant to be a web page starts like one: Google Drive sends its
    quota or sign-in page in place of the file (torchvision saves whatever the server sends)."""
    if name.lower().endswith((".html", ".htm")):
        return
    with open(path, "rb") as f:
        head = f.read(256).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise DatasetError(f"{url}: server sent an HTML page instead of {name} (quota exceeded or login required?)")


def _download(url: str, path: Path, timeout: float) -> None:
    """Fetch ``url`` into ``path`` with torchvision's ``download_url``; a file:// URL is copied instead (torchvision
    cannot read one: it needs the length of an HTTP response)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        shutil.copyfile(urllib.request.url2pathname(parts.path), path)
        return
    from torchvision.datasets.utils import download_url  # heavy import, only when downloading

    with _socket_timeout(timeout):
        download_url(url, path.parent, path.name)  # no md5: fetch_url checks it, after the HTML check


def fetch_url(url: str, dest: str | Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` with torchvision's ``download_url``, checking ``md5`` (torchvision's
    ``calculate_md5``) when given.

    An existing ``dest`` is kept when its checksum matches (or when no checksum is known). What this adds to
    torchvision's helper: the file is fetched as ``<dest>.part`` and renamed once checked (torchvision writes in
    place and leaves a corrupt file behind), a wrong checksum or an HTML page is a DatasetError naming the value,
    and ``timeout`` seconds bound each socket operation.
    """
    from torchvision.datasets.utils import calculate_md5, check_integrity

    dest = Path(dest)
    if check_integrity(dest, md5):
        log.info("%s already present", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.unlink(missing_ok=True)  # a partial file of an earlier run: torchvision would take it as the download
    try:
        _download(url, tmp, timeout)
        _refuse_html(tmp, url, dest.name)
        if md5 is not None and (got := calculate_md5(tmp)) != md5:
            raise DatasetError(f"{dest.name}: md5 {got} does not match the expected {md5} (from {url})")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def extract_archive(archive: str | Path, dest_dir: str | Path, remove: bool = False) -> None:
    """Extract a .zip or .tar(.gz) archive into ``dest_dir``; refuses members that would land outside it.

    A marker ``.<archive name>.extracted`` records completion, so a second call does nothing.

    Not torchvision's ``extract_archive``: that one picks the format from the file name (an archive fetched from a
    URL such as a Google Drive link may have none; here the content decides) and extracts tars without the
    ``data`` filter (links and special files unchecked; Python applies it by default only from 3.14). Members are
    checked here before anything is written, and the marker is this module's own.
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


# the registry lives in difflens.data.registry (importable without numpy); re-exported for callers of sources
from .registry import RAW_NAMES, SOURCES, convert, download, names, raw_name  # noqa: E402,F401
