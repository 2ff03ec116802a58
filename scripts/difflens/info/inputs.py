"""What the information stage reads from a data set: model latents of its images, ground-truth masks on the grid
the model sees, and word rows checked before any denoiser runs. An image that cannot be decoded is left out of a
job's rows with a warning naming it and the reason (``drop_unreadable``), as extraction leaves it out of the
features, so that one corrupt file neither stops the stage nor disappears unreported."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.common import SPLITS, DatasetError
from ..models.base import check_geometry, fit_square

#: the value of a task's ``split`` key that selects every image
ALL_SPLITS = "all"


def split_names(split: str) -> list[str]:
    """The splits a task's ``split`` key selects: the one named, or every split for ``all``."""
    return list(SPLITS) if split == ALL_SPLITS else [split]


def encode_samples(model, ds, sample_ids: list[str], batch_size: int = 256) -> torch.Tensor:
    """Model latents of the given samples (float32, CPU): the deterministic encoding (VAE mode, or a reshape)."""
    out = []
    for i in range(0, len(sample_ids), batch_size):
        pixels = model.preprocess([ds.load_image(s) for s in sample_ids[i:i + batch_size]])
        with torch.no_grad():
            out.append(model.encode_images(pixels.to(model.device)).float().cpu())
    return torch.cat(out)


def preprocess_mask(mask: np.ndarray, resolution: int, geometry: str = "crop") -> np.ndarray:
    """A bool mask (H, W) of an image, through the geometry of ``DiffusionModel.preprocess`` (``geometry``: the
    model's; ``crop``, shorter side resized to ``resolution`` and centre crop, or ``squash``, the whole mask resized
    to ``resolution`` x ``resolution``; bilinear, then >= 1/2): the ground truth on the pixels the model sees."""
    im = fit_square(Image.fromarray(mask.astype(np.uint8) * 255), resolution, Image.BILINEAR, geometry)
    return np.asarray(im) >= 128


def model_view(image: Image.Image, geometry: str = "crop") -> np.ndarray:
    """The part of an image the model sees, RGB, at the image's own resolution: what a map on the latent grid lies
    over, once stretched to it. ``crop``: the centred square (``DiffusionModel.preprocess``); ``squash``: the whole
    image (the model sees all of it, squashed to a square)."""
    rgb = image.convert("RGB")
    return np.asarray(rgb if check_geometry(geometry) == "squash" else fit_square(rgb, min(image.size)))


def has_word(caption: str, word: str) -> bool:
    """Whether ``word`` occurs in ``caption`` as a whole word (case-insensitive)."""
    return bool(word.strip()) and re.search(rf"(?<![\w-]){re.escape(word.strip())}(?![\w-])", caption,
                                            flags=re.IGNORECASE) is not None


def word_rows(ds, splits: list[str], max_images: int, need_masks: bool) -> pd.DataFrame:
    """The words.csv rows of the first ``max_images`` images (0 = all) of each split in ``splits``, with their
    ``split`` and ``word_type`` (the table's own column, else its ``word_class``, else ``object`` when the data set
    has masks and ``word`` when not); checked: a non-empty caption, the word in
    it as a whole word, and (``need_masks``, a data set with objects.csv) a mask for every row."""
    if ds.words is None:
        raise ValueError(f"data set {ds.name!r} has no words.csv: no words to localize or edit")
    words = ds.words.merge(ds.samples[["sample_id", "split"]], on="sample_id")
    parts = []
    for split in splits:
        w = words[words["split"] == split]
        if max_images:
            keep = list(dict.fromkeys(w["sample_id"]))[:max_images]
            w = w[w["sample_id"].isin(keep)]
        parts.append(w)
    rows = pd.concat(parts)
    if not len(rows):
        raise ValueError(f"data set {ds.name!r}: no words.csv rows on split(s) {splits}")
    if "word_type" not in rows.columns:  # COCO-WL names its word classes; COCO-IT's words are object categories
        rows = rows.assign(word_type=rows["word_class"] if "word_class" in rows.columns else
                           "object" if ds.objects is not None else "word")
    for r in rows.itertuples():
        if not str(r.caption).strip():
            raise ValueError(f"data set {ds.name!r}: sample {r.sample_id!r} has an empty caption for word {r.word!r}")
        if not has_word(r.caption, r.word):
            raise ValueError(f"data set {ds.name!r}: sample {r.sample_id!r}: word {r.word!r} is not in its caption "
                             f"{r.caption!r}")
        if need_masks and ds.objects is not None and not str(r.objects).strip():
            raise ValueError(f"data set {ds.name!r}: sample {r.sample_id!r}: word {r.word!r} has no mask (empty "
                             f"objects in words.csv)")
    return rows.reset_index(drop=True)


def unreadable_images(ds, sample_ids) -> dict[str, str]:
    """{sample id: why} of the images among ``sample_ids`` that cannot be decoded (each distinct id tried once)."""
    out = {}
    for sid in dict.fromkeys(map(str, sample_ids)):
        try:
            ds.load_image(sid)
        except DatasetError as exc:
            out[sid] = str(exc)
    return out


def drop_unreadable(rows: pd.DataFrame, unreadable: dict[str, str], what: str, log) -> pd.DataFrame:
    """``rows`` without the rows of the ``unreadable`` images, each one named with its reason in a warning of ``log``
    (``what``: the job, for the message)."""
    for sid, why in unreadable.items():
        log.warning("%s: sample %r left out (%d rows): %s", what, sid, int((rows["sample_id"] == sid).sum()), why)
    return rows[~rows["sample_id"].astype(str).isin(set(unreadable))]


def class_rows(ds, rows: pd.DataFrame) -> pd.DataFrame:
    """Class-label localization rows (a class-conditional model): per image, one row whose "word" and "caption" are
    the image's class name (``label_name``) and whose context is the empty prompt (the null class), so that the
    word's CMI map is the pixel-wise MI of the class; its mask is the union of the objects of the image's word rows
    that name a word of the class name (object words first: "yellow triangle" -> the triangle's mask). Images with
    no such row are left out with a warning; none left is a ValueError naming the data set."""
    import logging

    import re

    if "label_name" not in ds.samples.columns:
        raise ValueError(f"data set {ds.name!r} has no label_name column in samples.csv: no class names to localize "
                         f"for a class-conditional model")
    labels = ds.samples.set_index("sample_id")["label_name"].astype(str)
    out, missing = [], []
    for sid, g in rows.groupby("sample_id", sort=False):
        label = labels[sid]
        named = g[g["word"].str.lower().isin(re.findall(r"\w+", label.lower()))]
        named = named[named["word_type"] == "object"] if (named["word_type"] == "object").any() else named
        objects = sorted({o for v in named["objects"].astype(str) for o in v.split(";") if o.strip()}, key=str)
        if not objects:
            missing.append(sid)
            continue
        out.append({**g.iloc[0].to_dict(), "word": label, "caption": label, "context": "", "word_type": "class",
                    "objects": ";".join(objects)})
    if missing:
        logging.getLogger(__name__).warning(
            "%s: %d of %d images have no word row naming a word of their class (label_name) with a mask, and are "
            "left out of the class-label localization (e.g. %s)", ds.name, len(missing), rows["sample_id"].nunique(),
            missing[:3])
    if not out:
        raise ValueError(f"data set {ds.name!r}: no image has a words.csv row naming its class (label_name) with a "
                         f"mask: nothing to localize for a class-conditional model")
    return pd.DataFrame(out, columns=rows.columns)
