"""The feature browser: a static site (``index.html``, ``app.js``, ``style.css``, ``data/*.js``, ``img/``) that opens
from disk with no server and no network. Data files are plain scripts (``DIFFLENS.add(key, {...})``) loaded on demand
with ``<script>`` tags, which browsers allow from ``file://`` where ``fetch`` is refused.

What it holds, per SAE: every live latent (up to ``max_latents``, the most frequent first) with its frequency, mean
activation, purity, best attribute and AUROC, its top images (with the latent's encoder response at each map
position when the maps were saved), one image per activation quantile and an activation histogram; per (model,
data set, layer, timestep): a 2-D PCA view of the pooled features of a seeded draw of images; per scored image:
its MI / CMI / attention maps per word and its ARO scores; per latent of a steered SAE (rule steer_latents) its
steering strip: the images regenerated unedited and under each edit of the latent, with each edit's rates."""
from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..sae.model import latent_response

SITE = Path(__file__).with_name("site")


def b64_uint8(a: np.ndarray, vmax: float | None = None) -> str:
    """A non-negative array scaled to 0..255 by ``vmax`` (its own max by default), as base64 of its bytes."""
    a = np.asarray(a, np.float32)
    top = float(a.max()) if vmax is None else float(vmax)
    q = np.zeros(a.shape, np.uint8) if top <= 0 else np.clip(np.rint(a / top * 255), 0, 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


@dataclass
class ImageBank:
    """Thumbnails written once each under ``folder/img/<data set>/``; ``src`` gives the page-relative path."""
    folder: Path
    size: int = 96
    _known: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._known)

    def src(self, dataset, sample_id: str) -> str:
        """``dataset`` is a ``data.common.Dataset``."""
        key = (dataset.name, str(sample_id))
        if key not in self._known:
            rel = f"img/{dataset.name}/{len(self._known)}.png"
            out = self.folder / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            image = dataset.load_image(str(sample_id)).convert("RGB")
            if max(image.size) > self.size:
                image.thumbnail((self.size, self.size))
            image.save(out, optimize=True)
            self._known[key] = rel
        return self._known[key]


def latent_pages(scores: np.ndarray, table: pd.DataFrame, *, top: int, quantiles, bins: int,
                 max_latents: int, keep=()) -> list[dict]:
    """Per latent of ``table`` (latents.csv rows; the most frequent ``max_latents``, and the latents ``keep`` after
    them, such as the steered ones): its statistics, the image positions of its top images and of one image per
    activation quantile (over the images it fires on), and a histogram of its non-zero activations. ``scores``:
    (images, n_latents) per-image activations."""
    ranked = table.sort_values(["frequency", "mean_activation"], ascending=False)
    head = ranked.head(max_latents)
    table = pd.concat([head, ranked[ranked["latent"].isin(list(keep)) & ~ranked["latent"].isin(head["latent"])]])
    out = []
    for r in table.to_dict("records"):
        col = scores[:, int(r["latent"])]
        order = np.argsort(-col, kind="stable")
        fired = np.flatnonzero(col > 0)
        quant = []
        if len(fired):
            vals = col[fired]
            for q in quantiles:
                target = np.quantile(vals, q)
                pos = int(fired[np.argmin(np.abs(vals - target))])
                quant.append({"q": float(q), "image": pos, "act": float(col[pos])})
        counts, edges = np.histogram(col[fired], bins=bins) if len(fired) else (np.zeros(bins, int),
                                                                                 np.linspace(0, 1, bins + 1))
        out.append({"id": int(r["latent"]), "freq": float(r["frequency"]), "mean": float(r["mean_activation"]),
                    "purity": float(r["purity"]), "sigma": float(r["sigma"]),
                    "attr": str(r["best_attribute"]) if pd.notna(r["best_attribute"]) else "",
                    "auroc": None if pd.isna(r["auroc"]) else round(float(r["auroc"]), 4),
                    "top": [int(i) for i in order[:top] if col[i] > 0], "topAct": [float(col[i]) for i in order[:top]
                                                                                   if col[i] > 0],
                    "quant": quant, "hist": {"counts": counts.astype(int).tolist(),
                                             "edges": [float(e) for e in edges]},
                    "fired": int(len(fired))})
    return out


def pool_to(grid: np.ndarray, max_side: int) -> np.ndarray:
    """(m, H, W) averaged over blocks so that neither side exceeds ``max_side`` (the browser's maps stay small)."""
    f = int(np.ceil(max(grid.shape[1:]) / max_side))
    if f <= 1:
        return grid
    m, h, w = grid.shape
    pad = np.pad(grid, ((0, 0), (0, (-h) % f), (0, (-w) % f)), mode="edge")
    return pad.reshape(m, pad.shape[1] // f, f, pad.shape[2] // f, f).mean((2, 4))


def heat_maps(sae, maps: dict[str, np.ndarray], pages: list[dict], ids: list[str], max_side: int = 16) -> None:
    """Add to each page the latent's encoder response at every map position of its top images (pooled to at most
    ``max_side`` per side), as base64 uint8 on one scale per latent (``maps``: sample id -> (C, H, W))."""
    import torch

    for page in pages:
        chosen = [ids[i] for i in page["top"]]
        if not chosen:
            page["maps"], page["grid"] = [], None
            continue
        stack = np.stack([maps[s] for s in chosen]).astype(np.float32)  # (m, C, H, W)
        m, c, h, w = stack.shape
        x = torch.from_numpy(stack.reshape(m, c, h * w).transpose(0, 2, 1).reshape(-1, c).copy())
        grid = pool_to(latent_response(sae, x, page["id"]).cpu().numpy().reshape(m, h, w), max_side)
        top = float(grid.max())
        page["maps"] = [b64_uint8(g, top) for g in grid]
        page["grid"] = list(grid.shape[1:])
        page["mapMax"] = top


def pca_view(x: np.ndarray, *, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions of a seeded draw of ``max_points`` rows, their 2-D coordinates on the first two principal
    components of the pooled features ``x``, scaled to [0, 1])."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(x), size=min(max_points, len(x)), replace=False))
    z = x[pick].astype(np.float64)
    z -= z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T if vt.shape[0] >= 2 else np.c_[z @ vt[:1].T, np.zeros(len(z))]
    span = xy.max(0) - xy.min(0)
    xy = (xy - xy.min(0)) / np.where(span > 0, span, 1)
    return pick, xy


def colour_columns(rows: pd.DataFrame) -> dict[str, list[str]]:
    """The label and every attribute column of a row table, as strings (the data view colours points by one)."""
    skip = {"sample_id", "split", "label"}
    return {("label" if c == "label_name" else c): [str(v) for v in rows[c]] for c in rows.columns if c not in skip}


def info_images(maps: dict | None, aro: pd.DataFrame | None, dataset, bank: ImageBank, max_images: int = 200) -> list:
    """Per image (of the localization maps, then the ARO items): its words' MI / CMI / attention maps (MI and CMI
    on one scale in nats per latent pixel, attention on its own) and its ARO scores."""
    out: dict[str, dict] = {}
    if maps is not None:
        for i, sid in enumerate(map(str, maps["sample_id"])):
            if sid not in out and len(out) >= max_images:
                continue
            entry = out.setdefault(sid, {"id": sid, "img": bank.src(dataset, sid), "words": [], "aro": []})
            scale = float(max(maps["mi"][i].max(), maps["cmi"][i].max()))
            attention = {"attention": b64_uint8(maps["attention_itd"][i]),
                         "attMax": float(maps["attention_itd"][i].max())} if "attention_itd" in maps else {}
            entry["words"].append({"word": str(maps["word"][i]), "type": str(maps["word_type"][i]),
                                   "mi": b64_uint8(maps["mi"][i], scale), "cmi": b64_uint8(maps["cmi"][i], scale),
                                   "grid": list(maps["mi"][i].shape), "scale": scale, **attention,
                                   "miNats": float(maps["mi_nats"][i]), "cmiNats": float(maps["cmi_nats"][i])})
    if aro is not None:
        for sid, g in aro.groupby("sample_id", sort=False):
            sid = str(sid)
            if sid not in out and len(out) >= max_images:
                continue
            entry = out.setdefault(sid, {"id": sid, "img": bank.src(dataset, sid), "words": [], "aro": []})
            entry["aro"] = [{"kind": r["kind"], "group": "" if pd.isna(r["group"]) else str(r["group"]),
                             "score": r["score"], "margin": round(float(r["margin_nats"]), 3),
                             "correct": bool(r["correct"]), "candidates": int(r["n_candidates"])}
                            for r in g.to_dict("records")]
    return list(out.values())


def png_data(image: np.ndarray, size: int) -> str:
    """An RGB uint8 image as a PNG data URL, shrunk (never enlarged) to at most ``size`` pixels a side."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    if max(im.size) > size:
        im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _number(row: dict, column: str):
    """``row[column]`` as a float, None where it is missing or undefined (JSON null)."""
    v = row.get(column)
    return None if v is None or pd.isna(v) else float(v)


def add_steering(pages: list[dict], effects: pd.DataFrame, images: dict[str, np.ndarray], size: int) -> dict | None:
    """Give each page of a steered latent its steering strip (``steer``: per edit, in the order they ran, its label,
    images, success rate over its eligible images, off-target rate, eligible images (the shapes world's; null
    elsewhere) and mean change), on the first source of ``images`` (images.npz of rule steer_latents, read with
    ``effects``, its effects.csv). Returns what the strips share: the source and its unedited images (None when
    images.npz holds none). Images are PNG data URLs of at most ``size`` pixels a side."""
    sources = [k.removesuffix("/unedited") for k in images if k.endswith("/unedited")]
    if not sources:
        return None
    source = sources[0]
    rows = {(int(r["latent"]), str(r["edit"])): r for r in effects[effects["source"] == source].to_dict("records")}
    by_page = {page["id"]: page for page in pages}
    for key, stack in images.items():
        where, _, rest = key.partition("/")
        latent, _, label = rest.partition("/")
        if where != source or not label or int(latent) not in by_page:
            continue
        r = rows.get((int(latent), label), {})
        by_page[int(latent)].setdefault("steer", []).append(
            {"label": label, "images": [png_data(im, size) for im in stack], "success": _number(r, "success_rate"),
             "offTarget": _number(r, "off_target_rate"), "eligible": _number(r, "n_eligible"),
             "change": _number(r, "mean_change")})
    return {"source": source, "unedited": [png_data(im, size) for im in images[f"{source}/unedited"]]}


class SiteWriter:
    """Collects the index and the data files, then writes the site."""

    def __init__(self, folder: str | Path, title: str = "difflens feature browser"):
        self.folder = Path(folder)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.folder / "data").mkdir(parents=True)
        self.index = {"title": title, "saes": [], "views": [], "info": []}

    def add(self, section: str, meta: dict, data: dict) -> None:
        key = f"{section}-{len(self.index[section])}"
        (self.folder / "data" / f"{key}.js").write_text(
            f"DIFFLENS.add({json.dumps(key)}, {json.dumps(data, separators=(',', ':'))});\n")
        self.index[section].append({**meta, "key": key})

    def write(self) -> Path:
        for name in ("index.html", "app.js", "style.css"):
            shutil.copy(SITE / name, self.folder / name)
        (self.folder / "data" / "index.js").write_text(
            "window.DIFFLENS = window.DIFFLENS || {};\n"
            f"DIFFLENS.index = {json.dumps(self.index, separators=(',', ':'))};\n")
        return self.folder / "index.html"
