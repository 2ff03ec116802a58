"""Model layer: one ``DiffusionModel`` interface over every backbone (see ``base.py``).

``MODEL_KINDS`` maps the config's ``kind`` to the adapter class; ``load_model`` builds one.
"""
from __future__ import annotations

import importlib

from .catalog import ModelConfigError, check_architecture, config_folder

_ADAPTERS = {
    "shapes": ("difflens.models.shapes", "ShapesModel"),
    "sd": ("difflens.models.sd", "StableDiffusionModel"),
    "dit": ("difflens.models.dit", "DiTModel"),
    "sdxl": ("difflens.models.sdxl", "StableDiffusionXLModel"),
    "pixart": ("difflens.models.pixart", "PixArtModel"),
    "sd3": ("difflens.models.sd3", "StableDiffusion3Model"),
    "flux": ("difflens.models.flux", "FluxModel"),
}
MODEL_KINDS = tuple(_ADAPTERS)


def adapter_class(kind: str):
    """The ``DiffusionModel`` subclass for a config ``kind`` (imports torch on first use)."""
    if kind not in _ADAPTERS:
        raise ModelConfigError(f"unknown model kind {kind!r}; allowed: {list(MODEL_KINDS)}")
    module, name = _ADAPTERS[kind]
    return getattr(importlib.import_module(module), name)


def load_model(kind: str, source: str, *, dtype: str = "auto", device=None, **kwargs):
    """Load a backbone of the given kind from a hub id or local folder through its adapter; a folder holding a
    model the adapter cannot drive is refused first (``catalog.check_architecture``)."""
    check_architecture(kind, str(source), config_folder(str(source)))
    return adapter_class(kind).from_pretrained(source, dtype=dtype, device=device, **kwargs)


__all__ = ["ModelConfigError", "MODEL_KINDS", "adapter_class", "load_model"]
