"""The registry of real data sources: name -> (download, convert), and the raw folders they share.

Pure Python (the converter modules are imported only when a function is called), so the Snakefile can import it
when it parses. The helpers the converters share are in ``difflens.data.sources``.

``download(raw_dir: Path, **params) -> None``
    fetch the source's files, in the layout its publisher (or torchvision) leaves them, into ``raw_dir``.
``convert(raw_dir: Path, out_dir: Path, seed: int, **params) -> Path``
    read those files and write the data set in the common form (:mod:`difflens.data.common`) under ``out_dir``;
    returns the ``dataset.json`` path.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable



@dataclass(frozen=True)
class _Ref:
    """A function of a converter module, imported on first use."""

    module: str
    attr: str

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.attr)

    def __call__(self, *args, **kwargs):
        """Call the function; an unknown keyword gets a ValueError listing the allowed options."""
        fn = self.resolve()
        params = inspect.signature(fn).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = [p for p, v in params.items() if v.default is not inspect.Parameter.empty]
            raise ValueError(f"{self.module}.{self.attr}: unknown parameter(s) {unknown}; allowed: {allowed}")
        return fn(*args, **kwargs)


SOURCES: dict[str, tuple[_Ref, _Ref]] = {
    "pets": (_Ref("pets", "download"), _Ref("pets", "convert")),
    "caltech101": (_Ref("caltech", "download"), _Ref("caltech", "convert")),
    "aircraft": (_Ref("aircraft", "download"), _Ref("aircraft", "convert")),
    "flowers102": (_Ref("flowers", "download"), _Ref("flowers", "convert")),
    "aro_vg_relation": (_Ref("aro", "download_vg"), _Ref("aro", "convert_vg_relation")),
    "aro_vg_attribution": (_Ref("aro", "download_vg"), _Ref("aro", "convert_vg_attribution")),
    "aro_coco_order": (_Ref("aro", "download_coco_order"), _Ref("aro", "convert_coco_order")),
    "aro_flickr_order": (_Ref("aro", "download_flickr_order"), _Ref("aro", "convert_flickr_order")),
    "coco_it": (_Ref("coco", "download"), _Ref("coco", "convert_coco_it")),
    "coco100_it": (_Ref("coco", "download"), _Ref("coco", "convert_coco100_it")),
    "coco_wl": (_Ref("coco", "download"), _Ref("coco", "convert_coco_wl")),
}

# data sets that can share one raw folder (``results/raw/<raw name>``); a data set not listed uses its own name
RAW_NAMES: dict[str, str] = {
    "aro_vg_relation": "aro_vg",
    "aro_vg_attribution": "aro_vg",
    "coco_it": "coco2017",
    "coco100_it": "coco2017",
    "coco_wl": "coco2017",
}


#: the optional tables (besides samples.csv, ``difflens.data.common``) each source writes: ``words`` (the words of
#: each image's captions), ``objects`` (instance masks), ``aro`` (candidate captions); an image folder writes aro.csv
#: only with ``params.choices``. The config check refuses a task whose data set writes no table the task reads.
SOURCE_TABLES: dict[str, tuple[str, ...]] = {
    "shapes": ("words", "objects", "aro"),
    "imagefolder": ("words",),
    "pets": (),
    "caltech101": (),
    "aircraft": (),
    "flowers102": (),
    "aro_vg_relation": ("aro",),
    "aro_vg_attribution": ("aro",),
    "aro_coco_order": ("aro",),
    "aro_flickr_order": ("aro",),
    "coco_it": ("words", "objects"),
    "coco100_it": ("words", "objects"),
    "coco_wl": ("words",),
}


def tables_of(source: str, params: dict) -> tuple[str, ...]:
    """The optional tables a data set of ``source`` built with ``params`` writes (``SOURCE_TABLES``)."""
    tables = SOURCE_TABLES[source]
    if source == "imagefolder" and params.get("choices"):
        tables += ("aro",)
    return tables


def names() -> list[str]:
    return list(SOURCES)


def raw_name(dataset: str) -> str:
    """The raw folder name of a data set (shared by data sets built from the same download)."""
    _entry(dataset)
    return RAW_NAMES.get(dataset, dataset)


def _entry(name: str) -> tuple[_Ref, _Ref]:
    if name in SOURCES:
        return SOURCES[name]
    for dataset, raw in RAW_NAMES.items():
        if raw == name:
            return SOURCES[dataset]
    raise ValueError(f"unknown data set {name!r}; known: {names()} (raw names: {sorted(set(RAW_NAMES.values()))})")


def download(name: str, raw_dir: str | Path, **params) -> None:
    """Download data set (or raw name) ``name`` into ``raw_dir``."""
    _entry(name)[0](Path(raw_dir), **params)


def convert(name: str, raw_dir: str | Path, out_dir: str | Path, seed: int = 0, **params) -> Path:
    """Convert data set ``name`` from ``raw_dir`` into the common form under ``out_dir``; returns dataset.json."""
    if name not in SOURCES:
        raise ValueError(f"unknown data set {name!r}; known: {names()}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return SOURCES[name][1](Path(raw_dir), out_dir, int(seed), **params)
