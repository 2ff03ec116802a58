"""The shapes world: a seeded synthetic data set where every analysis has ground truth.

Each image (``image_size`` px, RGB) holds one or two flat-coloured objects of known shape, colour, size and
position. Two-object images are captioned with the spatial relation of the first object to the second
("a red circle to the left of a blue square"); the two objects always differ in colour and in shape, so the
relation-swap and attribute-swap negatives are always different captions. Sample ``i`` depends only on
``(seed, i)``, so the same seed gives byte-identical files.

Labels are what the image shows (which object a caption names first is a coin flip the image does not show):
``label`` (12 classes) is the "colour shape" of the **canonical object**: the single object, or of a pair the left
one (horizontal relations) or the upper one (vertical relations); a pair is always separated along its relation's
axis, so it is always defined. Beside it, ``samples.csv`` holds the attribute columns ``ATTRIBUTES`` (listed in
``dataset.json``): the canonical object's ``colour``, ``shape``, ``size``; ``n_objects``; ``axis`` (horizontal /
vertical, empty for one object); and ``has_<colour>`` / ``has_<shape>`` (0/1) for every colour and shape.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .common import remove_word, seeded_splits, write_dataset

COLOURS = {"red": (220, 45, 45), "green": (45, 185, 70), "blue": (55, 90, 235), "yellow": (235, 215, 45)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.15, "large": 0.21}  # half-extent as a fraction of the image side
RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
BACKGROUND = (20, 20, 20)
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
AXES = {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical"}
#: attribute columns of samples.csv, besides the class label (the targets a stage can be asked to read)
ATTRIBUTES = (["colour", "shape", "size", "n_objects", "axis"] + [f"has_{c}" for c in COLOURS]
              + [f"has_{s}" for s in SHAPES])
SUPERSAMPLE = 4
N_ORDER_NEGATIVES = 4


def vocabulary() -> list[str]:
    """Every word a shapes-world caption (or negative) can contain."""
    words = {"a"} | set(COLOURS) | set(SHAPES)
    for phrase in RELATIONS.values():
        words |= set(phrase.split())
    return sorted(words)


@dataclass(frozen=True)
class ShapesConfig:
    n_images: int = 10000
    image_size: int = 32
    seed: int = 0
    p_two_objects: float = 0.8
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self):
        if self.n_images < 1:
            raise ValueError(f"shapes.n_images must be >= 1, got {self.n_images}")
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"shapes.image_size must be a multiple of 8 and >= 16, got {self.image_size}")
        if not 0.0 <= self.p_two_objects <= 1.0:
            raise ValueError(f"shapes.p_two_objects must be in [0, 1], got {self.p_two_objects}")


def _coverage(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (anti-aliased by supersampling)."""
    n = size * SUPERSAMPLE
    c = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(c, c)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        h = 0.85 * r
        inside = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":
        inside = (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2.0)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _article_phrase(obj: dict) -> str:
    return f"a {obj['colour']} {obj['shape']}"


def sample_scene(seed: int, index: int, cfg: ShapesConfig) -> dict:
    """The objects and relation of sample ``index``; depends only on (seed, index) and the config."""
    rng = np.random.default_rng([seed, index])
    s = cfg.image_size
    two = rng.random() < cfg.p_two_objects
    n = 2 if two else 1
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes = rng.choice(SHAPES, size=n, replace=False)
    sizes = rng.choice(list(SIZES), size=n)
    objs = [{"colour": str(colours[k]), "shape": str(shapes[k]), "size": str(sizes[k])} for k in range(n)]
    radii = [SIZES[o["size"]] * s for o in objs]
    if not two:
        r = radii[0]
        objs[0]["cx"], objs[0]["cy"] = (float(v) for v in rng.uniform(r + 1, s - r - 1, size=2))
        return {"objects": objs, "relation": None}
    relation = str(rng.choice(list(RELATIONS)))
    # along the relation's axis, object 0 sits on the side the relation names, the pair at least gap apart
    low, high = (0, 1) if relation in ("left", "above") else (1, 0)
    gap = radii[0] + radii[1] + 1
    c_low = rng.uniform(radii[low] + 1, s - radii[high] - 1 - gap)
    c_high = rng.uniform(c_low + gap, s - radii[high] - 1)
    along = {low: c_low, high: c_high}
    for k, r in enumerate(radii):
        across = rng.uniform(r + 1, s - r - 1)
        if relation in ("left", "right"):
            objs[k]["cx"], objs[k]["cy"] = float(along[k]), float(across)
        else:
            objs[k]["cx"], objs[k]["cy"] = float(across), float(along[k])
    return {"objects": objs, "relation": relation}


def heldout_scenes(n: int, cfg: ShapesConfig | None = None) -> list[tuple[int, dict]]:
    """(index, scene) of the first ``n`` test-split scenes with two objects of a world (the default one if no cfg)."""
    cfg = cfg or ShapesConfig()
    splits = seeded_splits(cfg.n_images, cfg.seed, cfg.split_fractions)
    out = []
    for i, split in enumerate(splits):
        scene = sample_scene(cfg.seed, i, cfg) if split == "test" else None
        if scene and scene["relation"]:
            out.append((i, scene))
            if len(out) == n:
                break
    return out


def canonical_object(scene: dict) -> dict:
    """The object a label describes: the single one, or the left (horizontal) / upper (vertical) one of a pair."""
    objs = scene["objects"]
    if scene["relation"] is None:
        return objs[0]
    return objs[0] if scene["relation"] in ("left", "above") else objs[1]  # "a X left of / above a Y": X


def attributes_of(scene: dict) -> dict:
    """The attribute columns of a scene (``ATTRIBUTES``) and its label name."""
    canon = canonical_object(scene)
    objs = scene["objects"]
    row = {"colour": canon["colour"], "shape": canon["shape"], "size": canon["size"], "n_objects": len(objs),
           "axis": AXES[scene["relation"]] if scene["relation"] else ""}
    row.update({f"has_{c}": int(any(o["colour"] == c for o in objs)) for c in COLOURS})
    row.update({f"has_{s}": int(any(o["shape"] == s for o in objs)) for s in SHAPES})
    return row


def caption_of(scene: dict) -> str:
    objs = scene["objects"]
    if scene["relation"] is None:
        return _article_phrase(objs[0])
    return f"{_article_phrase(objs[0])} {RELATIONS[scene['relation']]} {_article_phrase(objs[1])}"


def negatives_of(scene: dict, rng: np.random.Generator) -> list[dict]:
    """ARO-style wrong captions: relation swap, attribute (colour) swap, word-order shuffles."""
    if scene["relation"] is None:
        return []
    a, b = scene["objects"]
    rel = RELATIONS[scene["relation"]]
    true = caption_of(scene)
    relation_swap = f"{_article_phrase(b)} {rel} {_article_phrase(a)}"
    attribute_swap = f"a {b['colour']} {a['shape']} {rel} a {a['colour']} {b['shape']}"
    words = true.split()
    shuffles: list[str] = []
    while len(shuffles) < N_ORDER_NEGATIVES:
        cand = " ".join(rng.permutation(words))
        if cand != true and cand not in shuffles:
            shuffles.append(cand)
    return [
        {"kind": "relation", "group": scene["relation"], "caption": true, "negatives": json.dumps([relation_swap])},
        {"kind": "attribute", "group": "colour", "caption": true, "negatives": json.dumps([attribute_swap])},
        {"kind": "order", "group": "shuffle", "caption": true, "negatives": json.dumps(shuffles)},
    ]


def render(scene: dict, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """RGB uint8 image (size x size x 3) and one bool mask per object."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUND
    masks = []
    for obj in scene["objects"]:
        cov = _coverage(obj["shape"], obj["cx"], obj["cy"], SIZES[obj["size"]] * size, size)
        img = img * (1 - cov[..., None]) + np.asarray(COLOURS[obj["colour"]], dtype=np.float64) * cov[..., None]
        masks.append(cov >= 0.5)
    return np.round(img).astype(np.uint8), masks


def generate(root: str | Path, cfg: ShapesConfig, progress: bool = True) -> Path:
    """Write the shapes world in the common on-disk form under ``root``; returns the dataset.json path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    splits = seeded_splits(cfg.n_images, cfg.seed, cfg.split_fractions)
    samples, objects, words, aro = [], [], [], []
    for i in tqdm(range(cfg.n_images), desc="shapes world", disable=not progress, mininterval=2):
        sid = f"shapes-{i:06d}"
        scene = sample_scene(cfg.seed, i, cfg)
        image, masks = render(scene, cfg.image_size)
        Image.fromarray(image).save(root / "images" / f"{sid}.png")
        caption = caption_of(scene)
        attributes = attributes_of(scene)
        label_name = f"{attributes['colour']} {attributes['shape']}"
        samples.append({"sample_id": sid, "split": splits[i], "label": CLASSES.index(label_name),
                        "label_name": label_name, "image": f"images/{sid}.png", "caption": caption,
                        "relation": scene["relation"] or "", **attributes})
        for k, (obj, mask) in enumerate(zip(scene["objects"], masks)):
            mask_rel = f"masks/{sid}_{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / mask_rel)
            objects.append({"sample_id": sid, "object": k, "name": obj["shape"], "mask": mask_rel,
                            "colour": obj["colour"], "shape": obj["shape"], "size": obj["size"],
                            "cx": round(obj["cx"], 3), "cy": round(obj["cy"], 3)})
            for word, word_type in ((obj["shape"], "object"), (obj["colour"], "colour")):
                words.append({"sample_id": sid, "word": word, "caption": caption, "word_type": word_type,
                              "context": remove_word(caption, word), "objects": str(k)})
        if scene["relation"]:  # the relation's own word ("left", "above", ...): its ground truth is the pair
            words.append({"sample_id": sid, "word": scene["relation"], "caption": caption, "word_type": "relation",
                          "context": remove_word(caption, scene["relation"]), "objects": "0;1"})
        rng = np.random.default_rng([cfg.seed, i, 1])
        aro += [{"sample_id": sid, **row} for row in negatives_of(scene, rng)]
    (root / "shapes_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    return write_dataset(root, name="shapes", source="difflens shapes world", samples=pd.DataFrame(samples),
                         classes=CLASSES, image_size=cfg.image_size, objects=pd.DataFrame(objects),
                         words=pd.DataFrame(words), aro=pd.DataFrame(aro), attributes=ATTRIBUTES)


def choice_prompts(scenes: list[tuple[int, dict]], kind: str, seed: int = 0) -> list[list[str]]:
    """[true caption, its ``kind`` negative, as aro.csv holds it] for each (index, scene) of ``heldout_scenes``."""
    out = []
    for i, scene in scenes:
        row = next(r for r in negatives_of(scene, np.random.default_rng([seed, i, 1])) if r["kind"] == kind)
        out.append([row["caption"], json.loads(row["negatives"])[0]])
    return out


def find_colours(image: np.ndarray, min_pixels: int = 6) -> dict[str, tuple[float, float]]:
    """Centroids (cx, cy) of the palette colours present in an RGB image: a ground-truth judge of samples.

    Each non-background pixel is assigned to its nearest palette colour; colours covering fewer than
    ``min_pixels`` pixels are ignored.
    """
    pix = image.reshape(-1, 3).astype(np.float64)
    names = list(COLOURS)
    palette = np.asarray([BACKGROUND] + [COLOURS[c] for c in names], dtype=np.float64)
    nearest = np.argmin(((pix[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    ys, xs = np.divmod(np.arange(len(pix)), image.shape[1])
    found = {}
    for k, name in enumerate(names, start=1):
        sel = nearest == k
        if sel.sum() >= min_pixels:
            found[name] = (float(xs[sel].mean()) + 0.5, float(ys[sel].mean()) + 0.5)
    return found


def follows_caption(image: np.ndarray, caption: str) -> bool:
    """Does an image show the caption's colours (and, for two objects, their relation)? Shapes are not judged."""
    words = caption.split()
    colours = [w for w in words if w in COLOURS]
    found = find_colours(image)
    if any(c not in found for c in colours):
        return False
    if len(colours) < 2:
        return True
    relation = next(r for r, phrase in RELATIONS.items() if f" {phrase} " in f" {caption} ")
    (x0, y0), (x1, y1) = found[colours[0]], found[colours[1]]
    return {"left": x0 < x1, "right": x0 > x1, "above": y0 < y1, "below": y0 > y1}[relation]
