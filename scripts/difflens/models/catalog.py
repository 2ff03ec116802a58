"""What the config validator must know about each model kind, without importing torch or loading weights.

Layer names come from the model's own config when ``source`` is a local folder, else from the architecture of the
kind's public checkpoints (SD 1.x/2.x: 4 down blocks, mid block, 4 up blocks; DiT-XL/2: 28 transformer blocks).
"""
from __future__ import annotations

import json
from pathlib import Path

#: the difflens model card of a folder (shapes models; DiT folders may carry one with class names)
MODEL_CARD = "difflens_model.json"


class ModelConfigError(ValueError):
    """A model entry of the config (kind, layer, timestep, dtype, source) is invalid."""


UNET_ALIASES = {"bottleneck": "mid_block", **{f"up_ft{i}": f"up_blocks.{i}" for i in range(4)}}
LAYER_ALIASES = {"shapes": UNET_ALIASES, "sd": UNET_ALIASES, "dit": {}}
_DEFAULT_DEPTH = {"shapes": 3, "sd": 4, "dit": 28}


def _local_config(source: str, *parts: str) -> dict | None:
    path = Path(source).joinpath(*parts)
    return json.loads(path.read_text()) if path.is_file() else None


def unet_block_names(n_down: int, n_up: int) -> list[str]:
    """Block outputs of a UNet2DConditionModel in forward order."""
    return [f"down_blocks.{i}" for i in range(n_down)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(n_up)]


def static_layers(kind: str, source: str) -> list[str]:
    """Hookable layer paths (forward order) of the model of ``kind`` at ``source``."""
    if kind == "dit":
        cfg = _local_config(source, "transformer", "config.json")
        return [f"transformer_blocks.{i}" for i in range(cfg["num_layers"] if cfg else _DEFAULT_DEPTH["dit"])]
    cfg = _local_config(source, "unet", "config.json")
    n = len(cfg["block_out_channels"]) if cfg else _DEFAULT_DEPTH[kind]
    return unet_block_names(n, n)


def static_num_timesteps(source: str) -> int:
    """Training timesteps of the model's scheduler (its config when local, else the usual 1000)."""
    cfg = _local_config(source, "scheduler", "scheduler_config.json")
    return int(cfg.get("num_train_timesteps", 1000)) if cfg else 1000


def resolve_layer(kind: str, source: str, name: str, available: list[str] | None = None) -> str:
    """Module path of a layer given by path or alias; raises ModelConfigError listing the allowed names.

    ``available`` defaults to ``static_layers(kind, source)``; a loaded model passes its real block list.
    """
    available = static_layers(kind, source) if available is None else available
    aliases = {a: p for a, p in LAYER_ALIASES[kind].items() if p in available}
    path = aliases.get(name, name)
    if path not in available:
        raise ModelConfigError(f"unknown layer {name!r} for {kind} model {source!r}; allowed: "
                               f"{available + list(aliases)}")
    return path
