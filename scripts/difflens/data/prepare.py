"""Build one configured data set in the common form: dispatch on its ``source`` (the loader named in the config)."""
from __future__ import annotations

import json
from pathlib import Path

from . import imagefolder, shapes


def _tuples(params: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def prepare_dataset(name: str, source: str, params: dict, out_dir: str | Path, raw_dir: str | Path | None,
                    seed: int) -> Path:
    """Write data set ``name`` under ``out_dir``; returns its dataset.json. ``raw_dir`` holds downloads."""
    out_dir = Path(out_dir)
    if source == "shapes":
        return shapes.generate(out_dir, shapes.ShapesConfig(seed=seed, **_tuples(params)))
    if source == "imagefolder":
        return imagefolder.convert(out_dir=out_dir, seed=seed, name=name, **_tuples(params))
    from .registry import SOURCES

    if source not in SOURCES:
        raise ValueError(f"data set {name!r}: no loader {source!r}; allowed: "
                         f"{['shapes', 'imagefolder', *sorted(SOURCES)]}")
    _download, convert = SOURCES[source]
    return convert(Path(raw_dir), out_dir, seed=seed, **params)


def describe(dataset_json: str | Path) -> str:
    meta = json.loads(Path(dataset_json).read_text())
    return f"{meta['name']}: {meta['n_samples']} samples, {len(meta['classes'])} classes, tables {meta['tables']}"
