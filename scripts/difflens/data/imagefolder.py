"""Bring your own images: one subfolder per class, optionally a captions CSV.

``<path>/<class name>/<image file>``; captions CSV (optional) with columns ``image`` (path relative to ``<path>``,
``<class name>/<image file>``) and ``caption``. Without captions, ``caption_template`` (default "a photo of a
{label}") makes them from the class name. A captions CSV must match the images one to one: rows naming no image and
images without a row are a DatasetError (with counts and examples), unless ``allow_missing_captions`` is true - then
one warning gives the counts, and images without a row get the template caption. Splits are drawn with a seed.
Images are referenced in place (relative paths), not copied.

The information stage reads two more tables (``difflens.data.common``), both written here:

``words.csv``
    one row per (image, word) of its caption, template captions included: every distinct word (``words: all``) or
    every word but a short list of function words (``words: content``, the default; ``STOPWORDS``); ``context`` is
    the caption without the word (whole-word), ``objects`` is empty (an image folder has no masks), ``word_type``
    is ``word``.
``aro.csv`` (only with ``choices``)
    from a CSV of candidate captions: columns ``image`` (as in the captions CSV), ``caption`` (the true one) and
    ``negatives`` (the wrong ones: a JSON list, or ``|``-separated), optionally ``kind`` (default ``choice``) and
    ``group`` (default empty); an image may have several rows. A bad row is a DatasetError naming file and line.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd

from .common import WORD_COLUMNS, DatasetError, remove_word, seeded_splits, write_dataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
N_EXAMPLES = 3
#: ``words`` modes: every distinct word of a caption, or all but ``STOPWORDS``
WORD_MODES = ("content", "all")
#: function words left out of words.csv in ``words: content`` mode: articles, conjunctions, forms of "be", pronouns
#: and "of" / "to" (as in "to the left of"); prepositions that carry a relation (on, in, near, with, ...) stay in
STOPWORDS = frozenset("a an the of to and or but is are was were be been being it its this that these those there "
                      "their his her as".split())
#: a word: letters or digits, joined by inner apostrophes or hyphens (dog's, t-shirt)
WORD = re.compile(r"\w+(?:['\u2019-]\w+)*")
CHOICE_KIND = "choice"


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


def caption_words(caption: str, words: str = "content") -> list[str]:
    """The distinct words of a caption in order (case-insensitive; the first spelling kept): all of them
    (``words="all"``) or all but ``STOPWORDS`` (``"content"``)."""
    if words not in WORD_MODES:
        raise DatasetError(f"words must be one of {list(WORD_MODES)}, got {words!r}")
    seen = {}
    for w in WORD.findall(caption):
        if w.lower() not in seen and (words == "all" or w.lower() not in STOPWORDS):
            seen[w.lower()] = w
    return list(seen.values())


def word_table(samples: pd.DataFrame, words: str = "content") -> pd.DataFrame:
    """words.csv of captioned samples: one row per (sample, word of its caption), no masks."""
    rows = [{"sample_id": s.sample_id, "word": w, "caption": s.caption, "context": remove_word(s.caption, w),
             "objects": "", "word_type": "word"}
            for s in samples.itertuples() for w in caption_words(str(s.caption), words)]
    return pd.DataFrame(rows, columns=WORD_COLUMNS + ["word_type"])


def parse_negatives(text: str) -> list[str]:
    """The wrong captions of a choices row: a JSON list of strings, or ``|``-separated text."""
    text = str(text).strip()
    if text.startswith("["):
        negatives = json.loads(text)
        if not all(isinstance(n, str) for n in negatives):
            raise ValueError(f"the JSON list must hold captions (strings), got {negatives!r}")
    else:
        negatives = text.split("|")
    return [n.strip() for n in negatives]


def choice_row(row: pd.Series, sample_ids: dict[str, str]) -> dict:
    """One aro.csv row from a row of the choices CSV; a ValueError says what is wrong with it."""
    if row["image"] not in sample_ids:
        raise ValueError(f"image {row['image']!r} is not an image of the folder (<class>/<file>)")
    caption = str(row["caption"]).strip()
    try:
        negatives = parse_negatives(row["negatives"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"negatives {row['negatives']!r} is neither a JSON list nor |-separated text: {exc}") from None
    if not caption or not negatives or not all(negatives):
        raise ValueError(f"empty caption or negative: {caption!r} vs {negatives}")
    if caption in negatives:
        raise ValueError(f"a negative equals the caption {caption!r}")
    return {"sample_id": sample_ids[row["image"]], "kind": str(row.get("kind") or CHOICE_KIND),
            "group": str(row.get("group") or ""), "caption": caption, "negatives": json.dumps(negatives)}


def read_choices(src: Path, choices: str, sample_ids: dict[str, str], name: str) -> pd.DataFrame:
    """aro.csv from the choices CSV ``choices`` (relative to ``src`` or absolute); ``sample_ids``: image path
    (relative to ``src``) -> sample id. A DatasetError names the file and the line of a bad row."""
    table = pd.read_csv(src / choices, keep_default_na=False, dtype=str)
    missing = [c for c in ("image", "caption", "negatives") if c not in table.columns]
    if missing:
        raise DatasetError(f"{name}: choices file {choices} lacks column(s) {missing}; needed: image, caption, "
                           "negatives (a JSON list or |-separated), optional kind and group")
    rows = []
    for i, row in table.iterrows():
        try:
            rows.append(choice_row(row, sample_ids))
        except ValueError as exc:
            raise DatasetError(f"{name}: choices file {choices}, line {i + 2}: {exc}") from None
    if not rows:
        raise DatasetError(f"{name}: choices file {choices} has no rows")
    return pd.DataFrame(rows)


def convert(path: str | Path, out_dir: str | Path, seed: int = 0, captions: str | None = None,
            caption_template: str = "a photo of a {label}",
            split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), name: str = "imagefolder",
            allow_missing_captions: bool = False, words: str = "content", choices: str | None = None) -> Path:
    src, out = Path(path).resolve(), Path(out_dir)
    if not src.is_dir():
        raise DatasetError(f"{name}: image folder {src} does not exist")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{name}: {src} has no class subfolders (expected <path>/<class>/<image>)")
    files = [(c, f) for c in classes for f in sorted((src / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(f"{name}: no image files ({sorted(IMAGE_SUFFIXES)}) under {src}")
    sample_ids = {f"{c}/{f.name}": f"{c}/{f.stem}" for c, f in files}  # <class>/<file> -> sample id
    given = {}
    if captions:
        given = read_captions(src, captions, name)
        check_captions(given, list(sample_ids), captions, name, allow_missing_captions)
    out.mkdir(parents=True, exist_ok=True)
    splits = seeded_splits(len(files), seed, split_fractions)
    rows = []
    for (label_name, f), rel_src, split in zip(files, sample_ids, splits):
        rows.append({"sample_id": sample_ids[rel_src], "split": split, "label": classes.index(label_name),
                     "label_name": label_name, "image": os.path.relpath(f, out),
                     "caption": given.get(rel_src, caption_template.format(label=label_name))})
    samples = pd.DataFrame(rows)
    aro = read_choices(src, choices, sample_ids, name) if choices else None
    return write_dataset(out, name=name, source=f"imagefolder {src}", samples=samples, classes=classes,
                         words=word_table(samples, words), aro=aro)
