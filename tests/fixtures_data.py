"""Builders of tiny raw data sources in their real on-disk formats, for the tests of ``difflens.data`` converters.

Each ``build_*`` writes into a given folder exactly the files (names, layout, text/JSON/.mat formats) that the
real download leaves there, with a few tiny images, and returns facts the tests check against.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


def save_image(path: Path, size: tuple[int, int] = (12, 10), colour=(90, 120, 150), array: np.ndarray | None = None):
    """A small RGB image (JPEG or PNG by suffix); ``array`` (H x W x 3 uint8) gives exact pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array) if array is not None else Image.new("RGB", size, colour)
    im.save(path)


# ---------------------------------------------------------------- Oxford-IIIT Pet

PET_CLASSES = {"Abyssinian": 1, "american_bulldog": 2, "Bengal": 1}  # file prefix -> species (1 cat, 2 dog)


def build_pets(root: Path, n_trainval: int = 10, n_test: int = 3) -> dict:
    base = root / "oxford-iiit-pet"
    lines = {"trainval": [], "test": []}
    for label, (prefix, species) in enumerate(PET_CLASSES.items(), 1):
        for i in range(1, n_trainval + n_test + 1):
            image_id = f"{prefix}_{i}"
            save_image(base / "images" / f"{image_id}.jpg")
            split = "trainval" if i <= n_trainval else "test"
            lines[split].append(f"{image_id} {label} {species} {i}")
    (base / "annotations").mkdir(parents=True)
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return {"classes": ["Abyssinian", "American Bulldog", "Bengal"], "n_trainval": n_trainval, "n_test": n_test}


# ---------------------------------------------------------------- Caltech-101

CALTECH_COUNTS = {"accordion": 10, "Faces_easy": 20, "car_side": 6, "BACKGROUND_Google": 3}


def build_caltech(root: Path, counts: dict[str, int] = CALTECH_COUNTS) -> dict:
    base = root / "caltech101" / "101_ObjectCategories"
    for cls, n in counts.items():
        for i in range(1, n + 1):
            save_image(base / cls / f"image_{i:04d}.jpg")
    return {"classes": sorted(c for c in counts if c != "BACKGROUND_Google")}


# ---------------------------------------------------------------- FGVC-Aircraft

AIRCRAFT = [  # variant, family, manufacturer
    ("707-320", "Boeing 707", "Boeing"),
    ("A300B4", "A300", "Airbus"),
    ("Cessna 172", "Cessna 172", "Cessna"),
    ("F-16A/B", "F-16", "Lockheed Martin"),
]
AIRCRAFT_LEVELS = {"variant": ("variants.txt", 0), "family": ("families.txt", 1),
                   "manufacturer": ("manufacturers.txt", 2)}


def build_aircraft(root: Path, per_split: int = 2) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    image_no = 1000000
    for k, _ in enumerate(AIRCRAFT):
        for split in splits:
            for _ in range(per_split):
                image_no += 1
                save_image(data / "images" / f"{image_no:07d}.jpg")
                splits[split].append((f"{image_no:07d}", k))
    for level, (fname, col) in AIRCRAFT_LEVELS.items():
        names = list(dict.fromkeys(a[col] for a in AIRCRAFT))
        (data / fname).write_text("\n".join(names) + "\n")
        for split, rows in splits.items():
            (data / f"images_{level}_{split}.txt").write_text(
                "".join(f"{image_id} {AIRCRAFT[k][col]}\n" for image_id, k in rows))
    (data / "images_variant_trainval.txt").write_text("")  # exists in the real archive, unused here
    return {"splits": splits}


# ---------------------------------------------------------------- Flowers-102

def build_flowers(root: Path, n_classes: int = 3, per_class: int = 6) -> dict:
    base = root / "flowers-102"
    n = n_classes * per_class
    labels = np.repeat(np.arange(1, n_classes + 1), per_class)
    np.random.default_rng(0).shuffle(labels)
    for i in range(1, n + 1):
        save_image(base / "jpg" / f"image_{i:05d}.jpg")
    ids = np.arange(1, n + 1)
    split = {"trnid": [], "valid": [], "tstid": []}
    for c in range(1, n_classes + 1):  # like the real file: 2 train, 1 val, rest test per class
        members = ids[labels == c]
        split["trnid"] += members[:2].tolist()
        split["valid"] += members[2:3].tolist()
        split["tstid"] += members[3:].tolist()
    savemat(base / "imagelabels.mat", {"labels": labels.astype(np.uint8)[None, :]})
    savemat(base / "setid.mat", {k: np.asarray(sorted(v), dtype=np.uint16)[None, :] for k, v in split.items()})
    return {"labels": labels, "split": split}


# ---------------------------------------------------------------- ARO: VG-Relation / VG-Attribution

def quadrant_image(h: int = 30, w: int = 40) -> np.ndarray:
    """Four flat colours (red top-left, green top-right, blue bottom-left, white bottom-right)."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 255)
    return a


def build_vg(root: Path) -> dict:
    for image_id in ("2340001", "2340002"):
        save_image(root / "images" / f"{image_id}.jpg", array=quadrant_image())
    save_image(root / "images" / "2340003.png", array=quadrant_image())
    box_red = {"bbox_x": 0, "bbox_y": 0, "bbox_w": 20, "bbox_h": 15}
    box_white = {"bbox_x": 20, "bbox_y": 15, "bbox_w": 20, "bbox_h": 15}
    relation = [
        {"image_id": "2340001", "image_path": "2340001.jpg", **box_red, "relation_name": "sitting on",
         "true_caption": "the cat is sitting on the mat", "false_caption": "the mat is sitting on the cat"},
        {"image_id": "2340001", "image_path": "2340001.jpg", **box_red, "relation_name": "on",
         "true_caption": "the cup is on the table", "false_caption": "the table is on the cup"},
        {"image_id": "2340003", "image_path": "2340003.png", **box_white, "relation_name": "on",
         "true_caption": "the book is on the shelf", "false_caption": "the shelf is on the book"},
    ]
    attribution = [
        {"image_id": "2340002", "image_path": "2340002.jpg", **box_white, "attributes": ["white", "black"],
         "true_caption": "the white dog and the black cat", "false_caption": "the black dog and the white cat"},
        {"image_id": "2340002", "image_path": "2340002.jpg", **box_red, "attributes": ["red", "small"],
         "true_caption": "the red car and the small tree", "false_caption": "the small car and the red tree"},
    ]
    (root / "visual_genome_relation.json").write_text(json.dumps(relation))
    (root / "visual_genome_attribution.json").write_text(json.dumps(attribution))
    return {"relation": relation, "attribution": attribution}


# ---------------------------------------------------------------- ARO: COCO-Order / Flickr30k-Order

ORDER_CAPTIONS = [
    ["A man riding a wave on top of a surfboard.", "A large red bus parked next to a white building!",
     "Two dogs play with a frisbee in the green grass."],
    ["The kitchen has wooden cabinets and a small table.", "A cat sleeping on a blue couch, near a window."],
]


def build_order(root: Path, source: str = "coco") -> dict:
    entries = []
    for i, caps in enumerate(ORDER_CAPTIONS, 1):
        rel = f"val2014/COCO_val2014_{i:012d}.jpg" if source == "coco" else f"flickr30k-images/{1000 + i}.jpg"
        save_image(root / rel)
        entries.append({"image": rel, "caption": caps})
    name = "coco_karpathy_test.json" if source == "coco" else "flickr30k_test.json"
    (root / name).write_text(json.dumps(entries))
    return {"entries": entries, "json": root / name}


# ---------------------------------------------------------------- COCO 2017

def mask_to_rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a bool mask: column-major runs, starting with a run of 0s."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def rle_counts_to_string(counts: list[int]) -> str:
    """COCO's compressed RLE string of a counts list (the inverse of the decoder under test)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


COCO_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
                   {"id": 17, "name": "cat", "supercategory": "animal"},
                   {"id": 18, "name": "dog", "supercategory": "animal"},
                   {"id": 58, "name": "hot dog", "supercategory": "food"}]
H, W = 20, 30


def coco_masks() -> dict[str, np.ndarray]:
    """The ground-truth masks the fixture's annotations encode."""
    rect = np.zeros((H, W), bool)
    rect[3:8, 2:10] = True  # polygon (2,3)-(10,8): pixels x 2..9, y 3..7
    blob = np.zeros((H, W), bool)
    blob[10:15, 12:20] = True
    blob[12:17, 18:22] = True  # L-shaped, uncompressed RLE
    cat = np.zeros((H, W), bool)
    cat[0:6, 20:28] = True
    cat[2, 22] = False  # a hole, compressed RLE
    return {"rect": rect, "blob": blob, "cat": cat}


def build_coco2017(root: Path) -> dict:
    m = coco_masks()
    images, anns, caps = [], [], []

    def add_image(image_id, captions):
        fname = f"{image_id:012d}.jpg"
        save_image(root / "val2017" / fname, size=(W, H))
        images.append({"id": image_id, "file_name": fname, "height": H, "width": W, "license": 1,
                       "coco_url": "", "date_captured": "", "flickr_url": ""})
        for c in captions:
            caps.append({"image_id": image_id, "id": 100 * image_id + len(caps), "caption": c})

    def add_ann(ann_id, image_id, cat, seg, iscrowd=0):
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
                     "iscrowd": iscrowd, "area": 1.0, "bbox": [0, 0, 1, 1]})

    add_image(1, ["A hotdog stand on the street.", "A dog sits next to a cat. ", "Two dogs and a cat."])
    add_ann(11, 1, 18, [[2, 3, 10, 3, 10, 8, 2, 8]])
    add_ann(12, 1, 18, {"counts": mask_to_rle_counts(m["blob"]), "size": [H, W]}, iscrowd=1)
    add_ann(13, 1, 17, {"counts": rle_counts_to_string(mask_to_rle_counts(m["cat"])), "size": [H, W]})
    add_image(2, ["A person holds a hot dog while walking", "Some people eating."])
    add_ann(21, 2, 1, [[0, 0, 5, 0, 5, 5, 0, 5]])
    add_ann(22, 2, 58, [[10, 10, 20, 10, 20, 15, 10, 15], [1, 1, 2, 1]])  # 2nd polygon degenerate (2 points)
    add_image(3, ["Three dogs running through the grass and mud."])
    add_ann(31, 3, 18, [[0, 0, 30, 0, 30, 20, 0, 20]])
    add_image(4, ["A puppy in the grass next to his toy."])
    add_ann(41, 4, 18, [[1, 1, 4, 1, 4, 4]])
    add_image(5, ["A dog chasing a cat"])
    add_ann(51, 5, 17, [[1, 1, 6, 1, 6, 6, 1, 6]])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    info = {"description": "fixture", "version": "1.0", "year": 2017}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": COCO_CATEGORIES}))
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(
        {"info": info, "licenses": [], "images": images, "annotations": caps}))
    return {"masks": m}
