"""COCO val2017 word-localisation sets of Kong et al. (ICLR 2024): COCO-IT, COCO100-IT and COCO-WL.

Raw layout (the official zips unpacked into one folder): ``val2017/<000000xxxxxx>.jpg``,
``annotations/captions_val2017.json`` and ``annotations/instances_val2017.json`` (COCO format: ``images`` with
``id, file_name, height, width``; ``annotations``; ``categories`` with ``id, name``).

Each data set is its own converted folder (``samples.csv`` one row per image, ``words.csv`` one row per
image/word pair), all referencing the images through ``images/`` (a symlink to ``val2017/`` by default):

``coco_it``
    for every image and every category it contains, the first caption (annotation order) naming the category
    by whole-word, case-insensitive match, the plural form (simple English rules; the paper used ``inflect``)
    tried before the singular as the paper's generator does; ``word`` is the form in
    the caption, ``context`` the caption with it removed (:func:`common.remove_word`), ``objects`` the image's
    instances of that category, whose union is the ground truth. ``objects.csv`` + ``masks/`` hold one PNG per
    instance (crowd regions included). With ``one_caption_per_pair=False`` every naming caption gives a row.
``coco100_it``
    the COCO-IT rows of 10 categories x 10 distinct images: by default the paper's ten categories, the images
    drawn with ``seed`` (so they differ from the paper's published 100).
``coco_wl``
    ``n_per_word_class`` (image, caption, word) rows for each word class of :data:`WL_WORDS` (verbs, numbers,
    adjectives, adverbs, prepositions, pronouns, conjunctions), found by whole-word match and drawn with ``seed``
    (round-robin over each class's words, distinct images where possible); no masks (``objects`` empty). The
    words are matched as strings, not tagged: the lists hold words that take the named role in almost every COCO
    caption. (The paper's 70 rows were picked by hand.)

Masks: decoded by pycocotools as the COCO API's ``annToMask`` does (polygons: ``frPyObjects`` + ``merge``;
uncompressed RLE: ``frPyObjects``; compressed RLE strings as they are; then ``decode``), so they are bit-identical
with the official rasterisation. Polygons of fewer than three points are dropped first (they enclose nothing), and
every RLE is checked to cover the image exactly before pycocotools decodes it.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pycocotools.mask as mask_utils
from PIL import Image
from tqdm import tqdm

from .common import DatasetError, has_word, remove_word, write_dataset
from .sources import Remote, fetch_all, place_images, require_dir, require_file

log = logging.getLogger(__name__)

REMOTES = (
    Remote("http://images.cocodataset.org/zips/val2017.zip", "val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80",
           extract=True),
    Remote("http://images.cocodataset.org/annotations/annotations_trainval2017.zip", "annotations_trainval2017.zip",
           "f4bbac642086de4f52a3fdda2de5fa2c", extract=True),
)
IMAGE_DIR = "val2017"
CAPTIONS = "annotations/captions_val2017.json"
INSTANCES = "annotations/instances_val2017.json"
PAPER_COCO100_CATEGORIES = ["airplane", "bear", "bed", "cat", "dog", "elephant", "horse", "person", "teddy bear",
                            "zebra"]
WL_WORDS: dict[str, list[str]] = {
    "verb": ["sitting", "standing", "walking", "riding", "holding", "eating", "laying", "jumping", "looking",
             "swimming", "wearing", "flying", "playing", "runs", "grazes"],
    "number": ["two", "three", "four", "five", "six", "seven", "eight"],
    "adjective": ["cute", "brown", "white", "black", "young", "elderly", "older", "pregnant", "red", "green",
                  "yellow", "wooden", "large", "small"],
    "adverb": ["slowly", "happily", "brightly", "partially", "vertically", "comfortably", "quickly", "together",
               "very", "nearby", "closely"],
    "preposition": ["behind", "in front of", "next to", "under", "above", "beside", "near", "across", "through"],
    "pronoun": ["his", "her", "their", "its", "them", "they", "he", "she"],
    "conjunction": ["and", "while", "but", "where", "or", "because"],
}
_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
                      "scissors": "scissors", "broccoli": "broccoli"}


def download(raw_dir: Path, md5: dict[str, str] | None = None, keep_archives: bool = False) -> None:
    """The official val2017 images and 2017 annotation zips (md5 checked), unpacked into ``raw_dir``."""
    fetch_all(REMOTES, Path(raw_dir), md5, keep_archives)


# ----------------------------------------------------------------------------------------------------------------
# words


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) category name: last word, simple rules plus COCO's irregulars."""
    *head, last = noun.split(" ")
    if last in _IRREGULAR_PLURALS:
        last = _IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join(head + [last])


def naming_form(caption: str, category: str) -> str | None:
    """The form (plural first, as the paper) in which ``caption`` names ``category``, or None."""
    for form in dict.fromkeys((plural(category), category)):
        if has_word(caption, form):
            return form
    return None


def _clean(caption: str) -> str:
    return " ".join(caption.split())


# ----------------------------------------------------------------------------------------------------------------
# masks


def rle_string_to_counts(s: str) -> list[int]:
    """Decode COCO's compressed RLE string: 5 payload bits a character (offset 48, bit 0x20 = more follows,
    sign-extended), each count after the second stored as the difference to the count two before.

    Kept (pycocotools decodes the string itself) only to validate a string before pycocotools sees it: its C
    decoder reads past the end of a truncated string and accepts any character."""
    counts: list[int] = []
    pos = 0
    while pos < len(s):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(s):
                raise ValueError("truncated RLE string")
            c = ord(s[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid RLE character {s[pos]!r}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def check_rle_runs(counts: list[int], height: int, width: int) -> None:
    """Raise ValueError unless the run lengths are non-negative and cover the ``height x width`` image exactly.

    pycocotools does not check this: runs that stop short leave the rest of its output uninitialised."""
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(f"RLE runs sum to {runs.sum()}, not height*width = {height * width}")


def rle_to_mask(counts: list[int] | str, height: int, width: int) -> np.ndarray:
    """Bool mask from COCO RLE: uncompressed run lengths (0s first, column-major) or the compressed string."""
    check_rle_runs(rle_string_to_counts(counts) if isinstance(counts, str) else counts, height, width)
    rle = {"counts": counts, "size": [height, width]}
    if not isinstance(counts, str):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


def polygons_to_mask(polygons: list, height: int, width: int) -> np.ndarray:
    """Union of polygons ``[[x0, y0, x1, y1, ...], ...]`` as a bool mask (pycocotools' rasterisation)."""
    kept = []
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64)
        if xy.ndim != 1 or len(xy) % 2:
            raise ValueError(f"polygon must be a flat list of x, y pairs, got {len(xy)} numbers")
        # fewer than three points enclose nothing (pycocotools too gives them no pixels), and pycocotools would
        # read a list whose first polygon has four numbers as boxes [x, y, w, h]: such polygons are dropped
        if len(xy) >= 6:
            kept.append(xy.tolist())
    if not kept:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(kept, height, width))).astype(bool)


def segmentation_to_mask(seg, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygon list, or RLE dict with ``counts`` list or string) to a bool mask."""
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        h, w = (int(v) for v in seg["size"])
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {[h, w]} differs from the image size {[height, width]}")
        return rle_to_mask(seg["counts"], h, w)
    raise ValueError(f"unknown segmentation format ({type(seg).__name__})")


# ----------------------------------------------------------------------------------------------------------------
# reading the annotation files


@dataclass
class CocoIndex:
    """What the converters need from the two annotation files."""

    raw_dir: Path
    images: dict[int, dict]
    categories: dict[int, str]
    captions: dict[int, list[dict]] = field(default_factory=dict)  # image id -> [{"id", "caption"}]
    instances: dict[int, list[dict]] = field(default_factory=dict)  # image id -> annotations

    def image_ids(self, limit: int | None = None) -> list[int]:
        return sorted(self.images)[:limit]


def _load(path: Path, keys: list[str]) -> dict:
    try:
        data = json.loads(require_file(path, "COCO annotation file").read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(f"{path}: missing top-level key(s) {missing}")
    return data


def load_index(raw_dir: Path) -> CocoIndex:
    raw_dir = Path(raw_dir)
    caps_path, inst_path = raw_dir / CAPTIONS, raw_dir / INSTANCES
    inst = _load(inst_path, ["images", "annotations", "categories"])
    caps = _load(caps_path, ["annotations"])
    images = {}
    for img in inst["images"]:
        try:
            images[int(img["id"])] = {"file_name": str(img["file_name"]), "height": int(img["height"]),
                                      "width": int(img["width"])}
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{inst_path}: image {img.get('id', '?')!r}: needs id, file_name, height, width") \
                from None
    index = CocoIndex(raw_dir, images, {int(c["id"]): str(c["name"]) for c in inst["categories"]},
                      defaultdict(list), defaultdict(list))
    for ann in inst["annotations"]:
        aid = ann.get("id", "?")
        if ann.get("image_id") not in images or ann.get("category_id") not in index.categories:
            raise DatasetError(f"{inst_path}: annotation {aid}: unknown image_id {ann.get('image_id')!r} or "
                               f"category_id {ann.get('category_id')!r}")
        if "segmentation" not in ann:
            raise DatasetError(f"{inst_path}: annotation {aid} (image {ann['image_id']}): no segmentation")
        index.instances[ann["image_id"]].append(ann)
    for ann in caps["annotations"]:
        if ann.get("image_id") not in images or not isinstance(ann.get("caption"), str):
            raise DatasetError(f"{caps_path}: caption {ann.get('id', '?')}: unknown image_id "
                               f"{ann.get('image_id')!r} or no caption text")
        index.captions[ann["image_id"]].append({"id": ann.get("id"), "caption": _clean(ann["caption"])})
    return index


# ----------------------------------------------------------------------------------------------------------------
# building the tables


def find_pairs(index: CocoIndex, one_caption_per_pair: bool = True, limit: int | None = None) -> list[dict]:
    """COCO-IT rows: (image, category present in it, caption naming it)."""
    rows = []
    for image_id in tqdm(index.image_ids(limit), desc="COCO-IT pairs", mininterval=5):
        cat_ids = dict.fromkeys(a["category_id"] for a in index.instances.get(image_id, []))
        for cat_id in cat_ids:
            category = index.categories[cat_id]
            for cap in index.captions.get(image_id, []):
                form = naming_form(cap["caption"], category)
                if form is None:
                    continue
                rows.append({"image_id": image_id, "category_id": cat_id, "category": category, "word": form,
                             "caption": cap["caption"], "caption_id": cap["id"]})
                if one_caption_per_pair:
                    break
    return rows


def _sid(image_id: int) -> str:
    return f"{image_id:012d}"


def _write_masks(index: CocoIndex, rows: list[dict], out_dir: Path) -> tuple[list[dict], dict[tuple, str]]:
    """One mask PNG per instance of each (image, category) in ``rows``; returns objects.csv rows and
    ``(image id, category id) -> "0;1;..."``."""
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    wanted = defaultdict(set)
    for r in rows:
        wanted[r["image_id"]].add(r["category_id"])
    objects, refs = [], {}
    for image_id in tqdm(sorted(wanted), desc="masks", mininterval=5):
        info = index.images[image_id]
        per_cat = defaultdict(list)
        k = 0
        for ann in index.instances[image_id]:
            if ann["category_id"] not in wanted[image_id]:
                continue
            try:
                mask = segmentation_to_mask(ann["segmentation"], info["height"], info["width"])
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{index.raw_dir / INSTANCES}: annotation {ann.get('id', '?')} (image "
                                   f"{image_id}): bad segmentation: {exc}") from exc
            rel = f"masks/{_sid(image_id)}_{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / rel)
            objects.append({"sample_id": _sid(image_id), "object": k, "name": index.categories[ann["category_id"]],
                            "mask": rel, "category_id": ann["category_id"], "ann_id": ann.get("id"),
                            "iscrowd": int(ann.get("iscrowd", 0)), "area": ann.get("area"),
                            "bbox": json.dumps(ann.get("bbox"))})
            per_cat[ann["category_id"]].append(str(k))
            k += 1
        for cat_id, ks in per_cat.items():
            refs[(image_id, cat_id)] = ";".join(ks)
    return objects, refs


def _write_words_dataset(index: CocoIndex, rows: list[dict], out_dir: Path, *, name: str, source: str,
                         with_masks: bool, link: str) -> Path:
    if not rows:
        raise DatasetError(f"{name}: no image/word pairs found in {index.raw_dir}")
    out_dir = Path(out_dir)
    image_root = require_dir(index.raw_dir / IMAGE_DIR, "COCO val2017 images")
    objects, refs = _write_masks(index, rows, out_dir) if with_masks else (None, {})
    words, samples = [], {}
    for r in rows:
        sid = _sid(r["image_id"])
        words.append({"sample_id": sid, "word": r["word"], "caption": r["caption"],
                      "context": remove_word(r["caption"], r["word"]),
                      "objects": refs.get((r["image_id"], r.get("category_id")), ""),
                      **{k: r[k] for k in ("category", "category_id", "word_class", "caption_id") if k in r}})
        if sid not in samples:
            info = index.images[r["image_id"]]
            samples[sid] = {"sample_id": sid, "split": "test", "label": -1, "label_name": "",
                            "image": info["file_name"], "caption": r["caption"], "image_id": r["image_id"],
                            "width": info["width"], "height": info["height"]}
    df = pd.DataFrame(list(samples.values()))
    df["image"] = place_images(image_root, list(df["image"]), out_dir, link)
    log.info("%s: %d images, %d word rows", name, len(df), len(words))
    classes = [index.categories[c] for c in sorted(index.categories)]
    return write_dataset(out_dir, name=name, source=source, samples=df, classes=classes,
                         objects=pd.DataFrame(objects) if with_masks else None, words=pd.DataFrame(words))


def convert_coco_it(raw_dir: Path, out_dir: Path, seed: int, one_caption_per_pair: bool = True,
                    limit: int | None = None, link: str = "symlink") -> Path:
    """COCO-IT (``seed`` unused: nothing is drawn; ``limit``: the first images by id only)."""
    index = load_index(raw_dir)
    rows = find_pairs(index, one_caption_per_pair, limit)
    return _write_words_dataset(index, rows, out_dir, name="coco_it", source="COCO val2017 (COCO-IT)",
                                with_masks=True, link=link)


def category_id(index: CocoIndex, name: str) -> int:
    for cat_id, cat_name in index.categories.items():
        if cat_name == name:
            return cat_id
    raise DatasetError(f"{index.raw_dir / INSTANCES}: unknown category {name!r}; known: "
                       f"{sorted(index.categories.values())}")


def convert_coco100_it(raw_dir: Path, out_dir: Path, seed: int, categories: list[str] | str = "paper",
                       n_categories: int = 10, n_images: int = 10, link: str = "symlink") -> Path:
    """COCO100-IT: ``n_images`` COCO-IT images per category, drawn with ``seed``. ``categories``: ``"paper"``
    (the paper's ten), ``"random"`` (``n_categories`` drawn with ``seed`` among those with enough images) or a
    list of category names."""
    index = load_index(raw_dir)
    by_cat = defaultdict(list)
    for r in find_pairs(index, one_caption_per_pair=True):
        by_cat[r["category"]].append(r)
    eligible = sorted(c for c, rs in by_cat.items() if len(rs) >= n_images)
    if categories == "paper":
        categories = PAPER_COCO100_CATEGORIES
    elif categories == "random":
        if len(eligible) < n_categories:
            raise DatasetError(f"coco100_it: only {len(eligible)} categories have {n_images} images: {eligible}")
        categories = sorted(np.random.default_rng(seed).choice(eligible, n_categories, replace=False).tolist())
    elif isinstance(categories, str):
        raise ValueError(f"coco100_it.categories must be 'paper', 'random' or a list of names, got {categories!r}")
    short = {c: len(by_cat.get(c, [])) for c in categories if c not in eligible}
    if short:
        for c in short:
            category_id(index, c)  # unknown names get their own message
        raise DatasetError(f"coco100_it: categories with fewer than {n_images} COCO-IT images: {short}")
    rows = []
    for c in categories:
        rng = np.random.default_rng([seed, category_id(index, c)])
        rows += [by_cat[c][i] for i in np.sort(rng.permutation(len(by_cat[c]))[:n_images])]
    return _write_words_dataset(index, rows, out_dir, name="coco100_it",
                                source=f"COCO val2017 (COCO100-IT: {', '.join(categories)})", with_masks=True,
                                link=link)


def find_word_rows(index: CocoIndex, words: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Every (image, caption, word) with a whole-word match, by word class."""
    found = defaultdict(list)
    for image_id in tqdm(index.image_ids(), desc="COCO-WL words", mininterval=5):
        for cap in index.captions.get(image_id, []):
            for word_class, ws in words.items():
                for w in ws:
                    if has_word(cap["caption"], w):
                        found[word_class].append({"image_id": image_id, "word": w, "word_class": word_class,
                                                  "caption": cap["caption"], "caption_id": cap["id"]})
    return found


def draw_round_robin(candidates: list[dict], words: list[str], n: int, rng: np.random.Generator,
                     used_images: set) -> list[dict]:
    """Up to ``n`` candidates: words taken in turn (list order), each word's candidates in a seeded order,
    images not yet in ``used_images`` first (it is updated)."""
    order = rng.permutation(len(candidates))
    queues = {w: [candidates[i] for i in order if candidates[i]["word"] == w] for w in words}
    picked: list[dict] = []
    for fresh_only in (True, False):
        progress = True
        while len(picked) < n and progress:
            progress = False
            for w in words:
                q = queues[w]
                j = next((j for j, r in enumerate(q) if not fresh_only or r["image_id"] not in used_images), None)
                if j is None or len(picked) >= n:
                    continue
                row = q.pop(j)
                picked.append(row)
                used_images.add(row["image_id"])
                progress = True
    return picked


def convert_coco_wl(raw_dir: Path, out_dir: Path, seed: int, words: dict[str, list[str]] | None = None,
                    n_per_word_class: int = 10, link: str = "symlink") -> Path:
    """COCO-WL: ``n_per_word_class`` seeded rows per word class (``words`` replaces :data:`WL_WORDS`)."""
    words = WL_WORDS if words is None else words
    index = load_index(raw_dir)
    found = find_word_rows(index, words)
    rows, used = [], set()
    for k, (word_class, ws) in enumerate(words.items()):
        picked = draw_round_robin(found[word_class], list(ws), n_per_word_class,
                                  np.random.default_rng([seed, k]), used)
        if len(picked) < n_per_word_class:
            log.warning("coco_wl: only %d rows for word class %s", len(picked), word_class)
        rows += picked
    return _write_words_dataset(index, rows, out_dir, name="coco_wl", source="COCO val2017 (COCO-WL)",
                                with_masks=False, link=link)
