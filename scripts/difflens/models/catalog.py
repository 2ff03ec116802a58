"""What the config validator must know about each model kind, without importing torch or loading weights.

Layer names come from the model's own config when ``source`` is a local folder, else from the architecture of the
kind's public checkpoints (SD 1.x/2.x: 4 down blocks, mid block, 4 up blocks; DiT-XL/2: 28 transformer blocks).
"""
from __future__ import annotations

import json
import math
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


#: the scheduler of Stable Diffusion 1.x / 2.x, assumed for a hub model whose config is not on disk yet
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
               "num_train_timesteps": 1000}


def schedule_log_snr(cfg: dict) -> list[float]:
    """log(abar / (1 - abar)) of every training timestep of a diffusers scheduler config, in pure Python (the
    betas as diffusers builds them for ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or ``trained_betas``)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas"):
        betas = [float(b) for b in cfg["trained_betas"]]
    elif kind == "linear":
        betas = [start + (end - start) * i / (n - 1) for i in range(n)]
    elif kind == "scaled_linear":
        betas = [(start ** 0.5 + (end ** 0.5 - start ** 0.5) * i / (n - 1)) ** 2 for i in range(n)]
    elif kind == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)]
    else:
        raise ModelConfigError(f"scheduler beta_schedule {kind!r} is not one of linear, scaled_linear, "
                               f"squaredcos_cap_v2 (or trained_betas)")
    out, abar = [], 1.0
    for b in betas:
        abar *= 1 - b
        out.append(math.log(abar / (1 - abar)))
    return out


def static_log_snr_range(source: str, kind: str = "sd") -> tuple[float, float]:
    """(lowest, highest) log-SNR the model at ``source`` was trained on: its scheduler config when local, else
    the kind's usual schedule (Stable Diffusion's, about -5.4 .. 7.1; a shapes model not trained yet: DDPM's
    linear schedule, about -10.1 .. 9.2)."""
    default = {"beta_schedule": "linear", "num_train_timesteps": 1000} if kind == "shapes" else SD_SCHEDULE
    table = schedule_log_snr(_local_config(source, "scheduler", "scheduler_config.json") or default)
    return min(table), max(table)


def resolve_layer(kind: str, source: str, name: str, available: list[str] | None = None) -> str:
    """Module path of a layer given by path or alias; raises ModelConfigError listing the allowed names.

    ``available`` defaults to ``static_layers(kind, source)``; a loaded model passes its real block list.
    """
    available = static_layers(kind, source) if available is None else available
    aliases = {a: p for a, p in LAYER_ALIASES[kind].items() if p in available}
    path = aliases.get(name, name)
    if path not in available:
        inside = [p for p in available if name.startswith(p + ".")]
        why = (f"{name!r} is a sub-module of the block {inside[0]!r}: only block outputs are read "
               if inside else f"unknown layer {name!r} ")
        raise ModelConfigError(f"{why}for {kind} model {source!r}; allowed: {available + list(aliases)} (block "
                               f"outputs only; docs/models.md says how to add a sub-module)")
    return path


# ---- architectures each kind's adapter drives (read from a model folder's configs, before any job) ----------------
#: model_index.json ``_class_name`` of the pipelines each kind's adapter loads
KIND_PIPELINES = {"sd": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), "dit": ("DiTPipeline",)}
#: pipelines of families difflens has no adapter for (yet), with the family's name
UNSUPPORTED_PIPELINES = {
    "StableDiffusionXLPipeline": "SDXL", "StableDiffusionXLImg2ImgPipeline": "SDXL (refiner)",
    "StableDiffusionInpaintPipeline": "an inpainting Stable Diffusion", "StableDiffusionDepth2ImgPipeline":
    "a depth-conditioned Stable Diffusion", "PixArtAlphaPipeline": "PixArt-alpha", "PixArtSigmaPipeline":
    "PixArt-Sigma", "StableDiffusion3Pipeline": "SD3 / SD3.5", "FluxPipeline": "FLUX.1",
}
#: hub ids of well-known models of those families, refused before their configs are downloaded
KNOWN_HUB_PIPELINES = {
    "stabilityai/stable-diffusion-xl-base-1.0": "StableDiffusionXLPipeline",
    "stabilityai/stable-diffusion-xl-refiner-1.0": "StableDiffusionXLImg2ImgPipeline",
    "stabilityai/sdxl-turbo": "StableDiffusionXLPipeline",
    "stabilityai/stable-diffusion-3-medium-diffusers": "StableDiffusion3Pipeline",
    "stabilityai/stable-diffusion-3.5-medium": "StableDiffusion3Pipeline",
    "stabilityai/stable-diffusion-3.5-large": "StableDiffusion3Pipeline",
    "black-forest-labs/FLUX.1-dev": "FluxPipeline", "black-forest-labs/FLUX.1-schnell": "FluxPipeline",
    "PixArt-alpha/PixArt-XL-2-1024-MS": "PixArtAlphaPipeline",
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": "PixArtSigmaPipeline",
    "stabilityai/stable-diffusion-2-inpainting": "StableDiffusionInpaintPipeline",
}


def config_folder(source: str, model_cache: str | Path | None = None, mirror: str | Path | None = None) -> Path | None:
    """The folder whose configs describe the model at ``source``: the folder itself, or, for a hub id, its copy in
    ``model_cache`` (``<org>--<name>``) or in the ``mirror`` (``<org>/<name>``), the first that is a folder;
    None when no copy is on disk yet."""
    candidates = [Path(source)]
    if source.count("/") == 1 and not Path(source).exists():
        candidates += [Path(model_cache) / source.replace("/", "--")] if model_cache else []
        candidates += [Path(mirror) / source] if mirror else []
    return next((c for c in candidates if c.is_dir()), None)


def _refusal(kind: str, what: str, pipeline: str) -> ModelConfigError:
    other = [k for k, pipes in KIND_PIPELINES.items() if pipeline in pipes and k != kind]
    fix = (f"set kind: {other[0]}" if other else
           f"{UNSUPPORTED_PIPELINES.get(pipeline, pipeline)} models are not supported yet: kind {kind!r} drives "
           f"{' / '.join(KIND_PIPELINES[kind])} models only (docs/models.md lists what each kind drives)")
    return ModelConfigError(f"{what} is a {pipeline}: {fix}")


def check_architecture(kind: str, source: str, folder: Path | None = None) -> None:
    """Refuse a model the ``kind`` adapter cannot drive, from its configs in ``folder`` (config_folder) where they
    are on disk, else from the well-known hub ids; raises ModelConfigError naming the model's pipeline and the kind
    that would drive it, or saying that none does."""
    if kind not in KIND_PIPELINES:
        return
    if folder is None:
        if source in KNOWN_HUB_PIPELINES:
            raise _refusal(kind, f"{source!r}", KNOWN_HUB_PIPELINES[source])
        return
    pipeline = (_local_config(str(folder), "model_index.json") or {}).get("_class_name", "")
    if pipeline and pipeline not in KIND_PIPELINES[kind]:
        raise _refusal(kind, f"{source!r} ({folder / 'model_index.json'})", pipeline)
    unet = _local_config(str(folder), "unet", "config.json") or {}
    if kind == "sd" and unet.get("addition_embed_type"):
        raise _refusal(kind, f"{source!r} (its UNet takes {unet['addition_embed_type']!r} added conditions)",
                       "StableDiffusionXLPipeline")
    if kind == "sd" and unet.get("in_channels", 4) != 4:
        raise ModelConfigError(f"{source!r}: its UNet takes {unet['in_channels']} input channels (an inpainting or "
                               f"depth model); kind 'sd' drives text-to-image UNets of 4 latent channels only")
