"""Oxford-IIIT Pet (37 breeds) from the layout torchvision downloads.

``<raw_dir>/oxford-iiit-pet/images/<Breed>_<n>.jpg`` and ``annotations/{trainval,test}.txt``, whose lines read
``<image id> <class id 1..37> <species 1=cat 2=dog> <breed id>``. Class names are torchvision's: the image-id
prefix with each ``_``-separated part title-cased (``american_bulldog`` -> ``American Bulldog``), ordered by
class id. The test split is the published one; a seeded, per-class ``val_fraction`` of trainval becomes val.
"""
from __future__ import annotations

from pathlib import Path

from .common import DatasetError
from .sources import read_lines, require_dir, stratified_holdout, torchvision_download, write_classification

BASE = "oxford-iiit-pet"
SPECIES = {1: "cat", 2: "dog"}


def download(raw_dir: Path) -> None:
    """torchvision's OxfordIIITPet fetches and md5-checks images and annotations into ``raw_dir``."""
    torchvision_download("OxfordIIITPet", raw_dir)


def _class_name(image_id: str) -> str:
    return " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_"))


def read_list(path: Path) -> list[dict]:
    """The rows of trainval.txt / test.txt as dicts (image id, 0-based label, species)."""
    rows = []
    for no, line in read_lines(path):
        parts = line.split()
        try:
            image_id, label, species = parts[0], int(parts[1]), int(parts[2])
            if len(parts) != 4 or label < 1 or species not in SPECIES:
                raise ValueError
        except (ValueError, IndexError):
            sid = parts[0] if parts else "?"
            raise DatasetError(f"{path}:{no}: sample {sid!r}: expected '<image id> <class 1..37> <species 1|2> "
                               f"<breed id>', got {line!r}") from None
        rows.append({"sample_id": image_id, "label": label - 1, "species": SPECIES[species]})
    return rows


def convert(raw_dir: Path, out_dir: Path, seed: int, val_fraction: float = 0.1,
            caption_template: str = "a photo of a {}", class_names: list[str] | None = None,
            link: str = "symlink") -> Path:
    base = require_dir(Path(raw_dir) / BASE, "Oxford-IIIT Pet folder")
    anns = base / "annotations"
    trainval, test = read_list(anns / "trainval.txt"), read_list(anns / "test.txt")
    names: dict[int, str] = {}
    for row in trainval + test:
        name = _class_name(row["sample_id"])
        if names.setdefault(row["label"], name) != name:
            raise DatasetError(f"{anns}: sample {row['sample_id']!r}: class id {row['label'] + 1} is "
                               f"{names[row['label']]!r} elsewhere")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{anns}: class ids are not contiguous from 1: {sorted(k + 1 for k in names)}")
    classes = [names[i] for i in range(len(names))]
    held = stratified_holdout([r["label"] for r in trainval], val_fraction, seed)
    for row, is_val in zip(trainval, held):
        row["split"] = "val" if is_val else "train"
    for row in test:
        row["split"] = "test"
    records = [{**r, "image": f"{r['sample_id']}.jpg"} for r in trainval + test]
    return write_classification(Path(out_dir), name="pets", source="Oxford-IIIT Pet (torchvision layout)",
                                image_root=base / "images", records=records, classes=classes,
                                caption_template=caption_template, class_names=class_names, link=link)
