"""ARO (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution, COCO-Order and Flickr30k-Order.

Raw layouts, as the ARO repository (mertyg/vision-language-models-are-bows) publishes them:

VG-Relation / VG-Attribution (one raw folder for both)
    ``visual_genome_relation.json`` / ``visual_genome_attribution.json``: a list of test cases, each with
    ``image_path`` (relative to ``images/``), ``bbox_x``, ``bbox_y``, ``bbox_w``, ``bbox_h``, ``true_caption``,
    ``false_caption`` and ``relation_name`` (VG-R) or ``attributes`` (VG-A, the two swapped attributes);
    ``images/`` from ``vgr_vga_images.zip``. The image is cropped to the box at conversion, as ARO's loader does
    (PIL ``crop``, so a box past the border is padded black), and saved under ``crops/`` (one file per distinct
    image and box). ``group`` is the relation name, or ``"<attr0>_<attr1>"`` as ARO groups VG-A. A test case whose
    true and false captions are the same is skipped, and the skipped ones are counted and named in one warning (ARO
    keeps them: scored alike, they tie, and ARO's and the authors' evaluations count such a tie as wrong).
COCO-Order / Flickr30k-Order
    ``coco_karpathy_test.json`` / ``flickr30k_test.json`` (BLIP's retrieval annotations): a list of
    ``{"image": "<path relative to raw_dir>", "caption": [5 captions]}``; images under ``val2014/`` (COCO) or
    ``flickr30k-images/`` (Flickr30k, which must be obtained by hand). Every caption is a test case: the caption
    (normalised like ARO's ``pre_caption``: lower case, ``.!"()*#:;~`` dropped, at most ``max_words`` words) and
    four word-order perturbations, in this order: nouns and adjectives shuffled among themselves, all other words
    shuffled, words shuffled within each trigram, trigrams shuffled.

Deviation from ARO (documented): ARO finds nouns and adjectives with spaCy's tagger and tokenises with NLTK. No
NLP model is downloaded here, so a small rule-based tagger (:func:`word_class`: closed-class word lists, verb and
adverb suffixes, a list of common adjectives) stands in; it is close on the short, literal COCO/Flickr captions but
not identical. Perturbations are seeded (``seed``, image index, caption index): one draw each, kept even when it
leaves the caption unchanged, as ARO keeps it (its ``TextShuffler`` draws once from the global random state, which
``main_aro.py`` seeds); such a negative ties with the caption (``difflens.info.aro.TIE_RULES`` decides the tie), and
the log counts them. A caption that is empty after cleaning is dropped and counted in the log.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .common import DatasetError, write_dataset
from .sources import (Remote, extract_archive, fetch_all, gdrive_url, place_images, require_dir,
                      require_file)

log = logging.getLogger(__name__)

VG_FILES = {"relation": "visual_genome_relation.json", "attribute": "visual_genome_attribution.json"}
VG_REMOTES = (
    Remote(gdrive_url("1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3"), VG_FILES["relation"]),
    Remote(gdrive_url("13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw"), VG_FILES["attribute"]),
    Remote(gdrive_url("1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9"), "vgr_vga_images.zip", extract=True),
)
BLIP_ANNOTATIONS = "https://storage.googleapis.com/sfr-vision-language-research/datasets/"
ORDER_SOURCES = {
    "coco": {"json": "coco_karpathy_{split}.json", "name": "aro_coco_order", "title": "COCO-Order"},
    "flickr": {"json": "flickr30k_{split}.json", "name": "aro_flickr_order", "title": "Flickr30k-Order"},
}
COCO_VAL2014 = Remote("http://images.cocodataset.org/zips/val2014.zip", "val2014.zip",
                      "a3d79f5ed8d289b7a7554ce06a5782b3", extract=True)
FLICKR_IMAGES = "flickr30k-images"
ORDER_SPLITS = ("val", "test")
NEGATIVE_KINDS = ["shuffle_nouns_and_adj", "shuffle_allbut_nouns_and_adj", "shuffle_within_trigrams",
                  "shuffle_trigrams"]
CROP_FORMATS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {})}

# ----------------------------------------------------------------------------------------------------------------
# downloads


def download_vg(raw_dir: Path, md5: dict[str, str] | None = None, keep_archives: bool = False) -> None:
    """Both VG annotation files and the ~1 GB image zip from ARO's Google Drive (no published checksums:
    pass ``md5={filename: digest}`` to pin them)."""
    fetch_all(VG_REMOTES, Path(raw_dir), md5, keep_archives)
    require_dir(Path(raw_dir) / "images", "VG images folder from vgr_vga_images.zip")


def _order_annotation(split: str, source: str) -> Remote:
    if split not in ORDER_SPLITS:
        raise ValueError(f"split must be one of {list(ORDER_SPLITS)}, got {split!r}")
    name = ORDER_SOURCES[source]["json"].format(split=split)
    return Remote(BLIP_ANNOTATIONS + name, name)


def download_coco_order(raw_dir: Path, split: str = "test", md5: dict[str, str] | None = None,
                        keep_archives: bool = False) -> None:
    """BLIP's Karpathy-split COCO annotation and the COCO val2014 images (6.2 GB; md5 checked)."""
    fetch_all([_order_annotation(split, "coco"), COCO_VAL2014], Path(raw_dir), md5, keep_archives)


def download_flickr_order(raw_dir: Path, split: str = "test", images_archive: str | None = None,
                          md5: dict[str, str] | None = None) -> None:
    """BLIP's Flickr30k annotation. Flickr30k images need a sign-up (https://forms.illinois.edu/sec/229675):
    put ``flickr30k-images/`` into ``raw_dir`` or pass ``images_archive`` (a URL, or a local path) of an archive
    holding that folder."""
    raw_dir = Path(raw_dir)
    fetch_all([_order_annotation(split, "flickr")], raw_dir, md5)
    if images_archive is not None and not (raw_dir / FLICKR_IMAGES).is_dir():
        if "://" in images_archive:
            fetch_all([Remote(images_archive, images_archive.rstrip("/").rsplit("/", 1)[-1], extract=True)],
                      raw_dir, md5)
        else:
            extract_archive(require_file(Path(images_archive), "Flickr30k image archive"), raw_dir)
    if not (raw_dir / FLICKR_IMAGES).is_dir():
        raise DatasetError(f"{raw_dir / FLICKR_IMAGES}: Flickr30k images are missing; they cannot be downloaded "
                           "without signing up at https://forms.illinois.edu/sec/229675 - place them there, or "
                           "give images_archive")


# ----------------------------------------------------------------------------------------------------------------
# VG-Relation / VG-Attribution


def _load_json_list(path: Path) -> list:
    try:
        data = json.loads(require_file(path, "annotation file").read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of test cases, got {type(data).__name__}")
    return data


def _vg_case(item, path: Path, index: int, kind: str) -> dict:
    """Validate one VG test case; returns its fields (group included)."""
    where = f"{path}: test case {index}"
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected an object, got {type(item).__name__}")
    where += f" (image_id {item.get('image_id', '?')})"
    need = ["image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption",
            "relation_name" if kind == "relation" else "attributes"]
    missing = [k for k in need if k not in item]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}")
    try:
        box = [float(item[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: bbox fields must be numbers") from None
    if box[2] <= 0 or box[3] <= 0:
        raise DatasetError(f"{where}: empty box (w={box[2]}, h={box[3]})")
    if kind == "relation":
        group = str(item["relation_name"])
    else:
        attrs = item["attributes"]
        if not isinstance(attrs, list) or len(attrs) != 2:
            raise DatasetError(f"{where}: 'attributes' must be a list of two attributes, got {attrs!r}")
        group = f"{attrs[0]}_{attrs[1]}"
    return {"image_path": str(item["image_path"]), "box": box, "true": str(item["true_caption"]),
            "false": str(item["false_caption"]), "group": group, "image_id": str(item.get("image_id", ""))}


def _crop_name(image_path: str, box: list[float], ext: str) -> str:
    stem = re.sub(r"[^\w.-]", "_", Path(image_path).with_suffix("").as_posix())
    return f"crops/{stem}_" + "_".join(f"{v:g}" for v in box) + f".{ext}"


def _convert_vg(kind: str, raw_dir: Path, out_dir: Path, limit: int | None, crop_format: str) -> Path:
    if crop_format not in CROP_FORMATS:
        raise ValueError(f"crop_format must be one of {list(CROP_FORMATS)}, got {crop_format!r}")
    name, prefix = ("aro_vg_relation", "vgr") if kind == "relation" else ("aro_vg_attribution", "vga")
    path = Path(raw_dir) / VG_FILES[kind]
    items = _load_json_list(path)[:limit]
    image_dir = require_dir(Path(raw_dir) / "images", "VG images folder")
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    fmt, save_kw = CROP_FORMATS[crop_format]
    samples, aro, written, same = [], [], set(), []
    for i, item in enumerate(tqdm(items, desc=name, mininterval=5)):
        case = _vg_case(item, path, i, kind)
        sid = f"{prefix}-{i:05d}"
        if case["true"].strip() == case["false"].strip():  # no choice to make: skipped, and named below
            same.append(f"{sid} (test case {i}, image_id {case['image_id'] or '?'})")
            continue
        crop = _crop_name(case["image_path"], case["box"], crop_format)
        if crop not in written:
            src = image_dir / case["image_path"]
            try:
                with Image.open(src) as im:
                    x, y, w, h = case["box"]
                    im.convert("RGB").crop((x, y, x + w, y + h)).save(out_dir / crop, fmt, **save_kw)
            except OSError as exc:
                raise DatasetError(f"{path}: test case {i} ({sid}): cannot read image {src}: {exc}") from exc
            written.add(crop)
        samples.append({"sample_id": sid, "split": "test", "label": -1, "label_name": "", "image": crop,
                        "caption": case["true"], "source_image": case["image_path"], "image_id": case["image_id"],
                        "bbox": json.dumps(case["box"])})
        aro.append({"sample_id": sid, "kind": kind, "group": case["group"], "caption": case["true"],
                    "negatives": json.dumps([case["false"]])})
    if same:
        log.warning("%s: skipped %d test case(s) whose true and false captions are the same: %s%s", path, len(same),
                    ", ".join(same[:5]), ", ..." if len(same) > 5 else "")
    if not samples:
        raise DatasetError(f"{path}: no test cases")
    log.info("%s: %d test cases, %d crops, %d groups", name, len(samples), len(written),
             len({r["group"] for r in aro}))
    return write_dataset(out_dir, name=name, source=f"ARO {VG_FILES[kind]}", samples=pd.DataFrame(samples),
                         classes=[], aro=pd.DataFrame(aro))


def convert_vg_relation(raw_dir: Path, out_dir: Path, seed: int, limit: int | None = None,
                        crop_format: str = "jpg") -> Path:
    """VG-Relation: one sample (the cropped image) per test case, negatives = [the relation-swapped caption].
    ``seed`` is unused (nothing is drawn); ``limit`` keeps the first test cases only."""
    return _convert_vg("relation", Path(raw_dir), Path(out_dir), limit, crop_format)


def convert_vg_attribution(raw_dir: Path, out_dir: Path, seed: int, limit: int | None = None,
                           crop_format: str = "jpg") -> Path:
    """VG-Attribution: as :func:`convert_vg_relation`, negatives = [the attribute-swapped caption]."""
    return _convert_vg("attribute", Path(raw_dir), Path(out_dir), limit, crop_format)


# ----------------------------------------------------------------------------------------------------------------
# word-order perturbations (no NLP model)

_CLOSED = set("""
a an the this that these those some any each every no another other both all either neither few many much more
most several such own same enough lot lots
i me my mine we us our you your he him his she her hers it its they them their theirs one ones someone somebody
something anyone anything everyone everything nobody nothing who whom whose which what where when why how there
here
on in at of with by for from to into onto over under near next behind beside besides between above below across
along around through inside outside up down off out against toward towards beneath underneath atop among past
during about upon like via than within without throughout beyond after before until since while as
and or but nor so yet because if although though whether then
zero one two three four five six seven eight nine ten eleven twelve dozen hundred first second third
is are was were be been being am has have had having do does did doing can could will would shall should may
might must get gets got
not very really quite just too almost also only still even ever again away together back
""".split())
_VERBS_S = set("""
sits stands holds rides looks eats lies lays flies walks plays waits runs grazes hangs leans poses sleeps drinks
carries shows contains swims jumps rests watches talks uses wears throws catches hits swings prepares cuts
pulls pushes reads smiles makes takes gives goes comes sees seems appears remains reaches points kicks skis
surfs skates laughs crosses travels drives parks stops waits stares displays features covers fills
""".split())
_NOUN_ING = set("""
building buildings ceiling clothing thing things something nothing anything everything king ring rings string
painting paintings morning evening wedding icing frosting topping toppings dressing filling railing railings
sibling siblings pudding stuffing bedding awning awnings sling wing wings swing swings spring sing
""".split())
_ADJECTIVES = set("""
red white black blue green yellow brown orange pink purple gray grey silver gold golden dark light bright
large small big little tiny huge giant tall short long wide narrow high low young old new older elderly modern
empty full open closed clean dirty wet dry hot cold warm fresh ripe sliced cooked wooden
busy crowded cute pretty beautiful nice fancy different various single double multiple colorful
sunny cloudy snowy grassy sandy rocky paved lush leafy furry fluffy striped spotted
male female tasty delicious healthy fried frozen stuffed toasted baked grilled
""".split())
_ADJ_SUFFIXES = ("ful", "ous", "ive", "able", "ible", "ish", "less")
_NOUN_SUFFIXED = {"vegetable", "vegetables", "olives", "motive", "relatives", "handful", "archive", "detective"}
_NOUN_ED = {"bed", "beds", "shed", "sheds", "sled", "sleds", "seed", "seeds", "feed", "weed", "weeds", "steed"}


def clean_caption(caption: str, max_words: int = 30) -> str:
    """ARO's caption normalisation: lower case, ``.!"()*#:;~`` to spaces, single spaces, at most ``max_words``."""
    text = re.sub(r'[.!"()*#:;~]', " ", caption.lower())
    return " ".join(text.split()[:max_words])


def tokenize(text: str) -> list[str]:
    """Words (with inner ``'`` or ``-``) and single punctuation marks."""
    return re.findall(r"\w+(?:['’-]\w+)*|[^\w\s]", text)


def detokenize(tokens: list[str]) -> str:
    return re.sub(r"\s+([,?%])", r"\1", " ".join(tokens))


def word_class(token: str) -> str:
    """``noun``, ``adj`` or ``other`` by rules: a stand-in for spaCy's NN*/JJ* tags."""
    t = token.lower()
    if not re.fullmatch(r"[a-z][a-z'’-]*", t) or t in _CLOSED or t in _VERBS_S:
        return "other"
    if t in _ADJECTIVES:
        return "adj"
    if (t.endswith("ing") and t not in _NOUN_ING) or (t.endswith("ed") and t not in _NOUN_ED):
        return "other"
    if t.endswith("ly") and len(t) > 4:
        return "other"
    suffix = next((x for x in _ADJ_SUFFIXES if t.endswith(x)), None)
    if suffix and len(t) >= len(suffix) + 4 and t not in _NOUN_SUFFIXED:
        return "adj"
    return "noun"


def _shuffle_at(tokens: list[str], idx: list[int], rng: np.random.Generator) -> list[str]:
    out = list(tokens)
    for i, j in zip(idx, rng.permutation(idx)):
        out[i] = tokens[j]
    return out


def shuffle_nouns_and_adj(tokens: list[str], rng: np.random.Generator) -> list[str]:
    """Nouns shuffled among the noun positions, adjectives among the adjective positions."""
    classes = [word_class(t) for t in tokens]
    out = _shuffle_at(tokens, [i for i, c in enumerate(classes) if c == "noun"], rng)
    return _shuffle_at(out, [i for i, c in enumerate(classes) if c == "adj"], rng)


def shuffle_allbut_nouns_and_adj(tokens: list[str], rng: np.random.Generator) -> list[str]:
    """Every word that is neither noun nor adjective shuffled among those positions."""
    return _shuffle_at(tokens, [i for i, t in enumerate(tokens) if word_class(t) == "other"], rng)


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[i:i + 3] for i in range(0, len(tokens), 3)]


def shuffle_within_trigrams(tokens: list[str], rng: np.random.Generator) -> list[str]:
    """Consecutive trigrams kept in place, the words inside each shuffled."""
    return [t for tri in _trigrams(tokens) for t in (tri[j] for j in rng.permutation(len(tri)))]


def shuffle_trigrams(tokens: list[str], rng: np.random.Generator) -> list[str]:
    """Consecutive trigrams (words inside kept in order) shuffled as units."""
    tris = _trigrams(tokens)
    return [t for k in rng.permutation(len(tris)) for t in tris[k]]


PERTURBATIONS: list[Callable[[list[str], np.random.Generator], list[str]]] = [
    shuffle_nouns_and_adj, shuffle_allbut_nouns_and_adj, shuffle_within_trigrams, shuffle_trigrams]


def order_negatives(caption: str, rng: np.random.Generator) -> list[str]:
    """The four perturbations of ``caption`` (already cleaned), one draw each from ``rng``, in ARO's order; as in
    ARO, a draw that leaves the caption unchanged is kept."""
    tokens = tokenize(caption)
    return [detokenize(fn(tokens, rng)) for fn in PERTURBATIONS]


# ----------------------------------------------------------------------------------------------------------------
# COCO-Order / Flickr30k-Order


def _convert_order(source: str, raw_dir: Path, out_dir: Path, seed: int, split: str, max_words: int,
                   limit: int | None, link: str) -> Path:
    spec = ORDER_SOURCES[source]
    if split not in ORDER_SPLITS:
        raise ValueError(f"split must be one of {list(ORDER_SPLITS)}, got {split!r}")
    path = raw_dir / spec["json"].format(split=split)
    items = _load_json_list(path)[:limit]
    samples, aro, dropped, same = [], [], 0, 0
    for i, item in enumerate(tqdm(items, desc=spec["name"], mininterval=5)):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            raise DatasetError(f"{path}: entry {i}: expected an object with an 'image' path")
        caps = item.get("caption")
        caps = [caps] if isinstance(caps, str) else caps
        sid = Path(item["image"]).stem
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise DatasetError(f"{path}: entry {i}: sample {sid!r}: 'caption' must be a non-empty list of strings")
        if not (raw_dir / item["image"]).is_file():
            raise DatasetError(f"{path}: entry {i}: sample {sid!r}: image {raw_dir / item['image']} does not exist")
        kept = []
        for k, raw in enumerate(caps):
            caption = detokenize(tokenize(clean_caption(raw, max_words)))
            if not caption:
                dropped += 1
                continue
            rng = np.random.default_rng([seed, i, k])
            negatives = [clean_caption(n, max_words) for n in order_negatives(caption, rng)]
            same += sum(n == caption for n in negatives)
            kept.append(caption)
            aro.append({"sample_id": sid, "kind": "order", "group": "shuffle", "caption": caption,
                        "negatives": json.dumps(negatives), "case": f"{sid}-{k}",
                        "negative_kinds": json.dumps(NEGATIVE_KINDS)})
        samples.append({"sample_id": sid, "split": "test", "label": -1, "label_name": "", "image": item["image"],
                        "caption": kept[0] if kept else clean_caption(caps[0], max_words)})
    if not aro:
        raise DatasetError(f"{path}: no test cases")
    if dropped:
        log.warning("%s: dropped %d caption(s) with no words left after cleaning", spec["name"], dropped)
    log.info("%s: %d of %d perturbations equal their caption (kept, as ARO keeps them: each ties with its caption)",
             spec["name"], same, len(NEGATIVE_KINDS) * len(aro))
    df = pd.DataFrame(samples)
    if df["sample_id"].duplicated().any():
        raise DatasetError(f"{path}: image {df['sample_id'][df['sample_id'].duplicated()].iloc[0]!r} listed twice")
    df["image"] = place_images(raw_dir, list(df["image"]), out_dir, link)
    log.info("%s: %d images, %d test cases", spec["name"], len(df), len(aro))
    return write_dataset(out_dir, name=spec["name"], source=f"ARO {spec['title']} ({path.name})", samples=df,
                         classes=[], aro=pd.DataFrame(aro))


def convert_coco_order(raw_dir: Path, out_dir: Path, seed: int, split: str = "test", max_words: int = 30,
                       limit: int | None = None, link: str = "symlink") -> Path:
    """COCO-Order: one sample per image, one aro row per caption (``limit``: first images only)."""
    return _convert_order("coco", Path(raw_dir), Path(out_dir), seed, split, max_words, limit, link)


def convert_flickr_order(raw_dir: Path, out_dir: Path, seed: int, split: str = "test", max_words: int = 30,
                         limit: int | None = None, link: str = "symlink") -> Path:
    """Flickr30k-Order: as :func:`convert_coco_order`."""
    return _convert_order("flickr", Path(raw_dir), Path(out_dir), seed, split, max_words, limit, link)
