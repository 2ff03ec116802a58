"""Caltech-101 in one of two protocols, ``params.protocol``.

``seeded`` (the default): the layout torchvision downloads, ``<raw_dir>/caltech101/101_ObjectCategories/<class>/*.jpg``.
Classes are the sorted folder names without ``BACKGROUND_Google`` (as torchvision). Caltech-101 has no official
split: train/val/test are drawn per class with :func:`common.seeded_splits` in the proportions ``fractions``.

``tfds``: the split of TensorFlow Datasets' ``caltech101`` (3.0.x), which the Revelio code loads as the Hugging Face
copy ``dpdl-benchmark/caltech101``. 102 labels: the folder names lower-cased, ``background_google`` included, sorted
(TFDS's label file); train = 30 images of every class, test = the rest (3,060 / 6,084 images). TFDS draws them with
numpy's legacy generator seeded 1234, one ``choice(files, 30, replace=False)`` per class folder over all its files
(only ``*.jpg`` files are then kept), walking folders and files in the order the file system lists them. That order
is the build machine's and is recorded nowhere, so from the raw archive this converter walks them sorted: TFDS's
labels and rule, and its very images wherever its listing was sorted. For the images the authors loaded, ``hf_folder``
names a local copy of the Hugging Face data set (its ``*.parquet`` files, or the ``datasets`` cache's ``*.arrow``
files, read with pyarrow), which is converted as it is.

The Revelio code uses no val split (it trains on train and reports test after every epoch). Diff-C and the probes
pick their epoch and strength on val, so ``tfds`` holds out a seeded ``val_fraction`` of every class of
``val_from``: ``test`` (the default: train keeps TFDS's 30 images per class) or ``train``.
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .common import DatasetError
from .sources import require_dir, stratified_holdout, stratified_splits, torchvision_download, write_classification

BASE = "caltech101/101_ObjectCategories"
EXCLUDED = ("BACKGROUND_Google",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PROTOCOLS = ("seeded", "tfds")
SEEDED_FRACTIONS = (0.7, 0.1, 0.2)
TFDS_SEED = 1234
TFDS_TRAIN_PER_CLASS = 30
TFDS_SPLITS = ("train", "test")
VAL_FROM = ("test", "train")
HF_IMAGES = "hf_images"  # where the images of an hf_folder copy are written, under the output folder
_SPLIT_WORD = re.compile(r"(?:^|[-_.])(train|test|validation|valid|val)(?=[-_.]|$)")
_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}


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


def tfds_split(root: Path) -> tuple[list[str], list[dict]]:
    """TFDS's labels and train/test draw over the class folders under ``root``, folders and files listed sorted."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetError(f"{root}: no class folders")
    classes = sorted(p.name.lower() for p in folders)
    if len(set(classes)) != len(classes):
        raise DatasetError(f"{root}: class folders differ only in case; TFDS labels are the lower-cased names")
    rng = np.random.RandomState(TFDS_SEED)  # numpy's legacy generator, as TFDS's np.random.seed(1234)
    records = []
    for folder in folders:
        nested = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if nested:
            raise DatasetError(f"{folder}: sub-folder(s) {nested}; a class folder holds only its image files")
        files = sorted(p.name for p in folder.iterdir())
        if len(files) < TFDS_TRAIN_PER_CLASS:
            raise DatasetError(f"{folder}: class {folder.name!r} has {len(files)} files; protocol tfds draws "
                               f"{TFDS_TRAIN_PER_CLASS} training images of every class")
        train = set(rng.choice(files, TFDS_TRAIN_PER_CLASS, replace=False).tolist())
        label = classes.index(folder.name.lower())
        records += [{"sample_id": f"{folder.name}-{Path(f).stem}", "label": label, "image": f"{folder.name}/{f}",
                     "split": "train" if f in train else "test"} for f in files if f.endswith(".jpg")]
    return classes, records


# ----------------------------------------------------------------------------------------------------------------
# a local copy of the Hugging Face data set (dpdl-benchmark/caltech101)


def _split_of(rel: Path) -> str | None:
    """The split a data file belongs to: a split word in its name (train-00000-of-00001.parquet,
    caltech101-test.arrow), else in the nearest folder name that has one (default/train/0000.parquet)."""
    for part in (rel.stem, *reversed(rel.parent.parts)):
        found = _SPLIT_WORD.search(part.lower())
        if found:
            return found.group(1)
    return None


def hf_files(folder: Path) -> dict[str, list[Path]]:
    """The ``*.parquet`` (or ``*.arrow``) files of a copy of the data set, by split; refuses any other layout."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: params.hf_folder is not a folder (a local copy of dpdl-benchmark/caltech101)")
    parquet, arrow = sorted(folder.rglob("*.parquet")), sorted(folder.rglob("*.arrow"))
    if parquet and arrow:
        raise DatasetError(f"{folder}: holds both .parquet and .arrow files; params.hf_folder must name one copy")
    if not parquet + arrow:
        raise DatasetError(f"{folder}: no .parquet or .arrow files (params.hf_folder: a local copy of "
                           "dpdl-benchmark/caltech101, its data/train-*.parquet and data/test-*.parquet)")
    by_split: dict[str, list[Path]] = {}
    for path in parquet or arrow:
        split = _split_of(path.relative_to(folder))
        if split not in TFDS_SPLITS:
            what = "no split name" if split is None else f"split {split!r}"
            raise DatasetError(f"{path}: {what} in its file or folder name; the TFDS copy of Caltech-101 has the "
                               f"splits {list(TFDS_SPLITS)} (files train-*.parquet and test-*.parquet)")
        by_split.setdefault(split, []).append(path)
    missing = [s for s in TFDS_SPLITS if s not in by_split]
    if missing:
        raise DatasetError(f"{folder}: no file of the split(s) {missing} (expected train-*.parquet and "
                           "test-*.parquet, or their .arrow files)")
    return by_split


def _read_table(path: Path):
    """A Parquet file, or an Arrow IPC file (the ``datasets`` cache writes streams), as a pyarrow Table."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading params.hf_folder needs pyarrow (pip install pyarrow)") from None
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: cannot read it as {path.suffix[1:]}: {exc}") from exc


def _label_names(table, path: Path) -> list[str]:
    """The ClassLabel names the ``datasets`` library stores in a file's schema metadata (key ``huggingface``)."""
    meta = (table.schema.metadata or {}).get(b"huggingface")
    try:
        return [str(n) for n in json.loads(meta)["info"]["features"]["label"]["names"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: no label names: its schema metadata needs the key 'huggingface' with "
                           f"info.features.label.names (as the datasets library writes it); missing {exc}") from None


def _image_suffix(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception as exc:  # PIL raises many types for broken files
        raise DatasetError(f"{where}: image bytes are not an image: {exc}") from exc
    return _FORMAT_SUFFIX.get(fmt, f".{fmt.lower()}")


def read_hf_folder(folder: Path, image_dir: Path) -> tuple[list[str], list[dict]]:
    """Classes and records of a copy of the Hugging Face data set; its images are written under ``image_dir``
    (``<split>/<row>.<format>``, rows counted per split over its files in name order)."""
    files = hf_files(folder)
    if image_dir.exists():
        shutil.rmtree(image_dir)
    classes: list[str] | None = None
    first: Path | None = None
    records: list[dict] = []
    for split in TFDS_SPLITS:
        row = 0
        for path in files[split]:
            table = _read_table(path)
            missing = [c for c in ("image", "label") if c not in table.column_names]
            if missing:
                raise DatasetError(f"{path}: no column(s) {missing}; its columns: {table.column_names}")
            names = _label_names(table, path)
            if classes is None:
                classes, first = names, path
            elif names != classes:
                raise DatasetError(f"{path}: its label names differ from those of {first}")
            for batch in table.select(["image", "label"]).to_batches():
                for rec in batch.to_pylist():
                    where = f"{path}: row {row} of split {split}"
                    image, label = rec["image"], rec["label"]
                    data = image.get("bytes") if isinstance(image, dict) else image
                    if not data:
                        raise DatasetError(f"{where}: the image has no bytes")
                    if not isinstance(label, int) or not 0 <= label < len(classes):
                        raise DatasetError(f"{where}: label {label!r} is not in 0..{len(classes) - 1}")
                    rel = f"{split}/{row:05d}{_image_suffix(data, where)}"
                    (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    (image_dir / rel).write_bytes(data)
                    records.append({"sample_id": f"{split}-{row:05d}", "label": label, "image": rel, "split": split})
                    row += 1
    train = np.bincount([r["label"] for r in records if r["split"] == "train"], minlength=len(classes))
    off = [(classes[i], int(n)) for i, n in enumerate(train) if n != TFDS_TRAIN_PER_CLASS]
    if off:
        raise DatasetError(f"{folder}: train holds {off[0][1]} images of class {off[0][0]!r} (and {len(off) - 1} "
                           f"other class(es) off); TFDS's split has {TFDS_TRAIN_PER_CLASS} of every class")
    return classes, records


# ----------------------------------------------------------------------------------------------------------------


def _refuse(protocol: str, **params) -> None:
    given = [k for k, v in params.items() if v is not None]
    if given:
        raise ValueError(f"caltech101 params.{given[0]} does not apply to protocol {protocol!r}; seeded takes "
                         "fractions, tfds takes val_fraction, val_from and hf_folder")


def _check_val(fraction: float, val_from: str) -> None:
    if val_from not in VAL_FROM:
        raise ValueError(f"caltech101 params.val_from must be one of {list(VAL_FROM)}, got {val_from!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"caltech101 params.val_fraction must be in (0, 1), got {fraction!r}")


def hold_out_val(records: list[dict], fraction: float, val_from: str, seed: int) -> None:
    """Move a seeded ``fraction`` of every class of split ``val_from`` to val (in place)."""
    _check_val(fraction, val_from)
    pool = [r for r in records if r["split"] == val_from]
    for rec, held in zip(pool, stratified_holdout([r["label"] for r in pool], fraction, seed)):
        if held:
            rec["split"] = "val"


def convert(raw_dir: Path, out_dir: Path, seed: int, protocol: str = "seeded",
            fractions: tuple[float, float, float] | None = None, val_fraction: float | None = None,
            val_from: str | None = None, hf_folder: str | None = None, caption_template: str = "a photo of a {}",
            class_names: list[str] | None = None, link: str = "symlink") -> Path:
    """Protocol ``seeded``: ``fractions`` (default 0.7 / 0.1 / 0.2); ``tfds``: ``val_fraction`` (default 0.1) of
    ``val_from`` (default test), from the raw archive or from ``hf_folder`` (module doc)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"caltech101 params.protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol == "seeded":
        _refuse(protocol, val_fraction=val_fraction, val_from=val_from, hf_folder=hf_folder)
        root = require_dir(Path(raw_dir) / BASE, "Caltech-101 category folders")
        classes, records = scan_class_folders(root, EXCLUDED)
        for rec, split in zip(records, stratified_splits([r["label"] for r in records], seed,
                                                         fractions or SEEDED_FRACTIONS)):
            rec["split"] = split
        source = "Caltech-101 (torchvision layout)"
    else:
        _refuse(protocol, fractions=fractions)
        val_fraction, val_from = 0.1 if val_fraction is None else val_fraction, val_from or VAL_FROM[0]
        _check_val(val_fraction, val_from)
        if hf_folder is None:
            root = require_dir(Path(raw_dir) / BASE, "Caltech-101 category folders")
            classes, records = tfds_split(root)
            source = "Caltech-101, TFDS split drawn from the raw archive (folders and files listed sorted)"
        else:
            root = Path(out_dir) / HF_IMAGES
            classes, records = read_hf_folder(Path(hf_folder), root)
            source = f"Caltech-101, TFDS split read from a Hugging Face copy ({hf_folder})"
        hold_out_val(records, val_fraction, val_from, seed)
    return write_classification(Path(out_dir), name="caltech101", source=source, image_root=root, records=records,
                                classes=classes, caption_template=caption_template, class_names=class_names,
                                link=link)
