"""The one on-disk form every data set lands in, and its reader.

A data set directory ``<root>/`` holds:

``dataset.json``
    ``{"name", "source", "classes": [label names by label id], "image_size": int|null, "tables": [...]}``.
``samples.csv``
    one row per image: ``sample_id`` (unique string), ``split`` (train/val/test), ``label`` (int, -1 if none),
    ``label_name``, ``image`` (path relative to the directory), ``caption`` (may be empty), plus source-specific
    columns; those named in ``dataset.json``'s ``attributes`` are ground-truth attributes (0/1, counts or
    category names; empty where undefined) that the analysis stages can take as targets besides ``label``.
``objects.csv`` (optional)
    one row per object instance: ``sample_id``, ``object`` (index within the image), ``name`` (category word),
    ``mask`` (relative path of a PNG, 255 inside), plus source-specific columns (colour, shape, bbox, ...).
``words.csv`` (optional, COCO-IT style)
    ``sample_id``, ``word``, ``caption``, ``context`` (caption with the word removed, whole-word match),
    ``objects`` (``;``-joined object indices whose union is the word's ground-truth mask; empty if none);
    optionally ``word_type`` (object, colour, relation, ...: the rows a localization table groups by).
``aro.csv`` (optional, ARO style)
    ``sample_id``, ``kind`` (relation/attribute/order; ``choice`` from an image folder's choices CSV), ``group``
    (relation or attribute name), ``caption`` (the true one), ``negatives`` (JSON list of wrong captions).

Everything is plain CSV/PNG/JSON so that any later stage, a notebook or another tool can read it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = ["sample_id", "split", "label", "label_name", "image", "caption"]
OBJECT_COLUMNS = ["sample_id", "object", "name", "mask"]
WORD_COLUMNS = ["sample_id", "word", "caption", "context", "objects"]
ARO_COLUMNS = ["sample_id", "kind", "group", "caption", "negatives"]
_TABLES = {"objects": OBJECT_COLUMNS, "words": WORD_COLUMNS, "aro": ARO_COLUMNS}


class DatasetError(ValueError):
    """A data set on disk (or a source being converted) is malformed; the message names file and sample."""


def _check_columns(df: pd.DataFrame, required: list[str], where: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; required: {required}")


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, lineterminator="\n")
    os.replace(tmp, path)


def write_dataset(
    root: str | Path,
    *,
    name: str,
    source: str,
    samples: pd.DataFrame,
    classes: list[str],
    image_size: int | None = None,
    objects: pd.DataFrame | None = None,
    words: pd.DataFrame | None = None,
    aro: pd.DataFrame | None = None,
    attributes: list[str] | tuple[str, ...] = (),
) -> Path:
    """Validate and write the tables of a data set whose image (and mask) files are already under ``root``.

    ``dataset.json`` is written last, so its presence marks a complete data set.
    """
    root = Path(root)
    _check_columns(samples, SAMPLE_COLUMNS, f"{name}: samples")
    dup = samples["sample_id"][samples["sample_id"].duplicated()]
    if len(dup):
        raise DatasetError(f"{name}: duplicate sample_id {dup.iloc[0]!r}")
    bad_split = samples[~samples["split"].isin(SPLITS)]
    if len(bad_split):
        row = bad_split.iloc[0]
        raise DatasetError(f"{name}: sample {row.sample_id!r} has split {row.split!r}; allowed: {list(SPLITS)}")
    for rel, sid in zip(samples["image"], samples["sample_id"]):
        if not (root / rel).is_file():
            raise DatasetError(f"{name}: sample {sid!r}: image file {root / rel} does not exist")
    known = set(samples["sample_id"])
    tables = []
    for tname, df in (("objects", objects), ("words", words), ("aro", aro)):
        if df is None:
            continue
        _check_columns(df, _TABLES[tname], f"{name}: {tname}")
        unknown = set(df["sample_id"]) - known
        if unknown:
            raise DatasetError(f"{name}: {tname}.csv names unknown sample_id {sorted(unknown)[0]!r}")
        _write_csv_atomic(df, root / f"{tname}.csv")
        tables.append(tname)
    missing = [a for a in attributes if a not in samples.columns or a in SAMPLE_COLUMNS]
    if missing:
        raise DatasetError(f"{name}: attribute column(s) {missing} are not extra columns of samples")
    samples = samples[SAMPLE_COLUMNS + [c for c in samples.columns if c not in SAMPLE_COLUMNS]]
    _write_csv_atomic(samples, root / "samples.csv")
    meta = {"name": name, "source": source, "classes": list(classes), "image_size": image_size,
            "n_samples": int(len(samples)), "tables": ["samples"] + tables, "attributes": list(attributes)}
    tmp = root / "dataset.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, root / "dataset.json")
    return root / "dataset.json"


_READ_OPTS = dict(keep_default_na=False, dtype={"sample_id": str, "caption": str, "context": str, "objects": str})


@dataclass
class Dataset:
    """A data set in the common form, read back from disk (tables are pandas frames)."""

    root: Path
    meta: dict
    samples: pd.DataFrame
    objects: pd.DataFrame | None = None
    words: pd.DataFrame | None = None
    aro: pd.DataFrame | None = None
    _index: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: str | Path) -> "Dataset":
        root = Path(root)
        meta_path = root / "dataset.json"
        if not meta_path.is_file():
            raise DatasetError(f"{root}: no dataset.json (not a converted data set, or conversion did not finish)")
        meta = json.loads(meta_path.read_text())
        tables = {t: pd.read_csv(root / f"{t}.csv", **_READ_OPTS) for t in meta.get("tables", ["samples"])}
        ds = cls(root=root, meta=meta, **tables)
        ds._index = {sid: i for i, sid in enumerate(ds.samples["sample_id"])}
        return ds

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def attributes(self) -> list[str]:
        """The attribute columns of samples.csv (ground truth besides the label); [] for most real data sets."""
        return list(self.meta.get("attributes", []))

    def split(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise DatasetError(f"{self.name}: unknown split {split!r}; allowed: {list(SPLITS)}")
        return self.samples[self.samples["split"] == split]

    def position(self, sample_id: str) -> int:
        """Row number of a sample in samples.csv (a stable per-sample key, e.g. for seeding)."""
        try:
            return self._index[sample_id]
        except KeyError:
            raise DatasetError(f"{self.name}: unknown sample_id {sample_id!r}") from None

    def row(self, sample_id: str) -> pd.Series:
        return self.samples.iloc[self.position(sample_id)]

    def image_path(self, sample_id: str) -> Path:
        return self.root / self.row(sample_id)["image"]

    def load_image(self, sample_id: str) -> Image.Image:
        """The image as RGB; raises DatasetError naming the sample and file when it cannot be decoded."""
        path = self.image_path(sample_id)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as exc:  # PIL raises many types for broken files
            raise DatasetError(f"{self.name}: sample {sample_id!r}: cannot read image {path}: {exc}") from exc

    def object_mask(self, sample_id: str, objects: list[int] | str | None = None) -> np.ndarray:
        """Union (bool array H x W) of the named objects' masks; all objects when ``objects`` is None."""
        if self.objects is None:
            raise DatasetError(f"{self.name}: has no objects.csv, so no masks")
        if isinstance(objects, str):
            objects = [int(o) for o in objects.split(";") if o != ""]
        rows = self.objects[self.objects["sample_id"] == sample_id]
        if objects is not None:
            rows = rows[rows["object"].isin(objects)]
        if not len(rows):
            raise DatasetError(f"{self.name}: sample {sample_id!r} has no object {objects}")
        masks = [np.asarray(Image.open(self.root / m)) > 127 for m in rows["mask"]]
        return np.logical_or.reduce(masks)


def replace_word(caption: str, word: str, new: str) -> str:
    """``caption`` with every whole-word, case-insensitive occurrence of ``word`` replaced by ``new`` (never a
    substring of another word)."""
    return re.sub(rf"(?<![\w-]){re.escape(word)}(?![\w-])", new, caption, flags=re.IGNORECASE)


def remove_word(caption: str, word: str) -> str:
    """The caption with every whole-word occurrence of ``word`` removed (never a substring of another word)."""
    return " ".join(replace_word(caption, word, " ").split())


def has_word(caption: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", caption, flags=re.IGNORECASE) is not None


def seeded_splits(n: int, seed: int, fractions: tuple[float, float, float]) -> list[str]:
    """A reproducible train/val/test assignment of ``n`` items in the given proportions."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DatasetError(f"split fractions {fractions} must be non-negative and sum to 1")
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    out = ["test"] * n
    for rank, i in enumerate(order):
        out[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out
