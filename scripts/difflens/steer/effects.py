"""What an edit did: its change map, and on the shapes world the attributes of the edited image read back by the
world's own renderer palette and geometry (``data.shapes.read_objects``).

* ``change_maps``: the per-pixel squared change of the edited against the unedited regeneration on the latent grid,
  summed over channels (as the intervention stage measures a prompt edit).
* ``attribute_effects``: for a latent whose word names a colour or a shape (``target_kind``), per image:
  ``eligible`` (the unedited image's canonical object, ``canonical_read``, has another value), ``success`` (the
  object matched to it in the edited image, by nearest centroid, has the latent's value), the off-target changes
  (``OFF_TARGET``: the object count, the other attribute of a matched object, a matched centroid moved more than
  ``move_px`` pixels) and the ``presence`` of the value before and after (a colour: the share of the image's pixels
  read as that colour; a shape: the number of objects of that shape).
* ``rates``: per (latent, edit) the success rate over eligible images, the off-target rate over all images (any of
  ``OFF_TARGET``, and each alone), and the mean presence before and after.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

#: the changes that count as off target for an edit of a colour (of a shape: "colour" instead of "shape")
OFF_TARGET = ("count", "other", "position")


def change_maps(edited: torch.Tensor, unedited: torch.Tensor) -> np.ndarray:
    """(B, h, w) squared change summed over latent channels."""
    return ((edited.float() - unedited.float()) ** 2).sum(1).cpu().numpy().astype(np.float64)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def target_kind(word: str) -> str | None:
    """``colour`` or ``shape`` when ``word`` names one of the shapes world's, else None."""
    from ..data.shapes import COLOURS, SHAPES

    return "colour" if word in COLOURS else "shape" if word in SHAPES else None


def presence(objects: list[dict], kind: str, word: str, n_pixels: int) -> float:
    """A colour's share of the image's pixels, or the number of objects of a shape, in a read (``read_objects``)."""
    hits = [o for o in objects if o[kind] == word]
    return sum(o["area"] for o in hits) / n_pixels if kind == "colour" else float(len(hits))


def matched(objects: list[dict], obj: dict | None) -> dict | None:
    """The object of ``objects`` nearest (by centroid) to ``obj``."""
    if obj is None or not objects:
        return None
    return min(objects, key=lambda o: (o["cx"] - obj["cx"]) ** 2 + (o["cy"] - obj["cy"]) ** 2)


def attribute_effects(before: list[np.ndarray], after: list[np.ndarray], word: str, *,
                      move_px: float) -> pd.DataFrame:
    """One row per image pair (unedited, edited; RGB uint8) for a latent whose word is a shapes-world colour or
    shape (module docstring): eligible, success, the off-target flags and ``off_target`` (any of them), presence
    before and after."""
    from ..data.shapes import canonical_read, read_objects, scene_changes

    kind = target_kind(word)
    if kind is None:
        raise ValueError(f"steering word {word!r} names no colour or shape of the shapes world")
    other = "shape" if kind == "colour" else "colour"
    out = []
    for a, b in zip(before, after):
        ra, rb = read_objects(a), read_objects(b)
        canon = canonical_read(ra)
        hit = matched(rb, canon)
        changes = scene_changes(ra, rb, move_px)
        flags = {"count": changes["count"], "other": changes[other], "position": changes["position"]}
        n = a.shape[0] * a.shape[1]
        out.append({"eligible": canon is not None and canon[kind] != word,
                    "success": hit is not None and hit[kind] == word, **{f"changed_{k}": v for k, v in flags.items()},
                    "off_target": any(flags.values()), "presence_before": presence(ra, kind, word, n),
                    "presence_after": presence(rb, kind, word, n)})
    return pd.DataFrame(out)


def rates(items: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of ``keys``: images, eligible images, success rate (over eligible), off-target rate (any, and each
    of ``OFF_TARGET``), mean presence before and after, and the share of images that held the value and lost some
    of it (``lowered``)."""
    def one(g: pd.DataFrame) -> pd.Series:
        elig = g[g["eligible"]]
        held = g[g["presence_before"] > 0]
        return pd.Series({"n_images": len(g), "n_eligible": len(elig),
                          "success_rate": elig["success"].mean() if len(elig) else np.nan,
                          "off_target_rate": g["off_target"].mean(),
                          **{f"{k}_rate": g[f"changed_{k}"].mean() for k in OFF_TARGET},
                          "presence_before": g["presence_before"].mean(), "presence_after": g["presence_after"].mean(),
                          "lowered": (held["presence_after"] < held["presence_before"]).mean() if len(held)
                          else np.nan})

    return items.groupby(keys, sort=False).apply(one, include_groups=False).reset_index()
