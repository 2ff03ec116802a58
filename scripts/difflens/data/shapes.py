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

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
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


def _nearest_palette(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) index of each pixel's nearest ``palette`` row (squared RGB distance) in an RGB image."""
    pix = image.reshape(-1, 3).astype(np.float64)
    return np.argmin(((pix[:, None, :] - palette[None]) ** 2).sum(-1), axis=1).reshape(image.shape[:2])


def find_colours(image: np.ndarray, min_pixels: int = 6) -> dict[str, tuple[float, float]]:
    """Centroids (cx, cy) of the palette colours present in an RGB image: a ground-truth judge of samples.

    Each non-background pixel is assigned to its nearest palette colour; colours covering fewer than
    ``min_pixels`` pixels are ignored.
    """
    names = list(COLOURS)
    palette = np.asarray([BACKGROUND] + [COLOURS[c] for c in names], dtype=np.float64)
    nearest = _nearest_palette(image, palette).ravel()
    ys, xs = np.divmod(np.arange(nearest.size), image.shape[1])
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


# --- reading images back: the objects an image (rendered or generated) shows, by the renderer's ground truth ---

#: the coverage levels an anti-aliased pixel can show between the background and a colour (render's supersampling)
_MIX_LEVELS = np.arange(1, SUPERSAMPLE ** 2 + 1) / SUPERSAMPLE ** 2
#: shape rule thresholds, between the values of the renderer's shapes (margins: tests/test_shapes_reader.py)
_TRIANGLE_TOP_SHARE = 0.375  # share of the area in the upper half of the box: triangle (apex up) 1/4, others 1/2
_SQUARE_CORNERS = 0.3  # filled share of the box's corners (|u| + |v| > 1.5 in box units): square 1, circle 0
_SQUARE_FILL = 0.9  # filled share of the box: square 1, circle pi/4 (decides squares of a few pixels a side)


def _colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int: 0 for background, k for the k-th colour of ``COLOURS``.

    The nearest-palette step of ``find_colours`` over a palette that also holds every mix of the background and a
    colour at the coverage levels render's supersampling makes; a pixel belongs to the colour when its mix covers
    at least half of it (render's own mask rule, so a rendered image reads back its exact masks). Plain
    nearest-colour assignment would not do: the half-covered edge pixels of a yellow object lie nearer green
    than yellow or background, and along a square's edge they form a spurious green object.
    """
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    colours = np.asarray([COLOURS[c] for c in COLOURS], dtype=np.float64)
    mixes = bg + _MIX_LEVELS[None, :, None] * (colours[:, None, :] - bg)  # (colour, level, rgb)
    nearest = _nearest_palette(image, np.concatenate([bg[None], mixes.reshape(-1, 3)]))
    colour, level = np.divmod(nearest - 1, len(_MIX_LEVELS))
    return np.where((nearest > 0) & (_MIX_LEVELS[level] >= 0.5), colour + 1, 0)


@functools.lru_cache(maxsize=None)
def _area_per_r2(shape: str) -> float:
    """A shape's area in units of its half-extent squared (pi, 2.89, 2), measured on the renderer's geometry."""
    r = 24.0
    return float(_coverage(shape, 32.0, 32.0, r, 64).sum()) / r ** 2


def _classify_shape(box: np.ndarray) -> str:
    """The shape of an object from its bool mask cropped to its bounding box.

    A triangle (apex up) has a quarter of its area in the upper half of its box, a circle or square half; a
    square fills its box's corners, a circle leaves them empty.
    """
    h, w = box.shape
    u = np.abs((np.arange(w) + 0.5) / w * 2 - 1)[None, :]
    v = ((np.arange(h) + 0.5) / h * 2 - 1)[:, None]
    upper = (box * ((v < 0) + 0.5 * (v == 0))).sum() / box.sum()
    if upper < _TRIANGLE_TOP_SHARE:
        return "triangle"
    corners = (u + np.abs(v)) > 1.5
    corner_fill = box[corners].mean() if corners.any() else 0.0
    return "square" if corner_fill > _SQUARE_CORNERS or box.mean() >= _SQUARE_FILL else "circle"


def read_objects(image: np.ndarray, min_pixels: int = 6) -> list[dict]:
    """The objects an RGB uint8 image (H, W, 3) of the shapes world shows, sorted by (cx, cy).

    Pixels are labelled by ``_colour_labels``; each colour's pixels split into 4-connected components, and
    components of at least ``min_pixels`` pixels are objects: {"colour", "shape" (``_classify_shape``), "cx", "cy"
    (area centroid in pixels, +0.5 like ``find_colours``; a triangle's lies r/3 below its box centre), "area"
    (pixels), "size" (the ``SIZES`` name nearest to the half-extent the area implies for that shape, as a fraction
    of the image width)}.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"read_objects: image must be RGB of shape (H, W, 3), got shape {image.shape}")
    labels = _colour_labels(image)
    names = list(COLOURS)
    out = []
    for k, name in enumerate(names, start=1):
        components, _ = ndimage.label(labels == k)  # default structure: 4-connected
        for j, (rows, cols) in enumerate(ndimage.find_objects(components), start=1):
            box = components[rows, cols] == j
            area = int(box.sum())
            if area < min_pixels:
                continue
            ys, xs = np.nonzero(box)
            shape = _classify_shape(box)
            half_extent = np.sqrt(area / _area_per_r2(shape)) / image.shape[1]
            out.append({"colour": name, "shape": shape, "cx": float(xs.mean()) + cols.start + 0.5,
                        "cy": float(ys.mean()) + rows.start + 0.5, "area": area,
                        "size": min(SIZES, key=lambda s: abs(SIZES[s] - half_extent))})
    return sorted(out, key=lambda o: (o["cx"], o["cy"]))


def _shape_centre(obj: dict) -> tuple[float, float]:
    """The centre of a read object's box, where the renderer placed it (scenes' cx, cy): its centroid, but for a
    triangle a third of its half-extent (from its area) above it, as the centroid of an apex-up triangle lies."""
    if obj["shape"] != "triangle":
        return obj["cx"], obj["cy"]
    return obj["cx"], obj["cy"] - np.sqrt(obj["area"] / _area_per_r2("triangle")) / 3


def canonical_read(objects: list[dict]) -> dict | None:
    """The object of a read (``read_objects``) that a label would describe: ``canonical_object`` off the image.

    None for no object; the single object; of two, the left one if the pair is further apart horizontally than
    vertically, else the upper one. A pair is always separated along its relation's axis, but when it is also
    that far apart across it the image does not show which axis the caption used: there this is a guess, wrong in
    a few percent of scenes (the rate: tests/test_shapes_reader.py). Of more than two (a generated image with a
    stray blob), the rule for two applied to the two largest by area.
    """
    if not objects:
        return None
    if len(objects) > 2:
        objects = sorted(objects, key=lambda o: -o["area"])[:2]
    if len(objects) == 1:
        return objects[0]
    (ax, ay), (bx, by) = (_shape_centre(o) for o in objects)
    axis = 0 if abs(ax - bx) > abs(ay - by) else 1
    return min(objects, key=lambda o: _shape_centre(o)[axis])


def scene_changes(before: list[dict], after: list[dict], move_px: float) -> dict:
    """What an edit changed, from reads (``read_objects``) of the unedited and the edited image.

    Objects are matched one to one by the distance of their centres (``_shape_centre``: the centroid, corrected
    for a triangle's, so that a shape edit is not a move) by optimal assignment, ``min(len(before), len(after))``
    pairs; the unmatched ones are what "count" reports. Returns bools: "count" (the number of objects differs),
    "shape", "colour", "size" (some matched pair differs in it), "position" (some matched pair's centre moved more
    than ``move_px`` pixels).
    """
    dist = np.array([[np.hypot(*np.subtract(_shape_centre(a), _shape_centre(b))) for b in after] for a in before])
    pairs = []
    if before and after:
        pairs = [(before[i], after[j], dist[i, j]) for i, j in zip(*linear_sum_assignment(dist))]
    changes = {"count": len(before) != len(after), "position": any(d > move_px for _, _, d in pairs)}
    changes.update({key: any(a[key] != b[key] for a, b, _ in pairs) for key in ("shape", "colour", "size")})
    return {key: changes[key] for key in ("count", "shape", "colour", "position", "size")}
