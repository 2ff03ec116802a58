"""What the config validator must know about each model kind, without importing torch or loading weights.

Layer names come from the model's own config when ``source`` is a local folder, else from the architecture of the
kind's public checkpoints (SD 1.x/2.x: 4 down blocks, mid block, 4 up blocks; SDXL: 3 and 3; DiT-XL/2 and PixArt:
28 transformer blocks; SD3.5-medium: 24 joint blocks; FLUX.1: 19 double-stream and 38 single-stream blocks).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)

#: the difflens model card of a folder (shapes models; DiT folders may carry one with class names)
MODEL_CARD = "difflens_model.json"


class ModelConfigError(ValueError):
    """A model entry of the config (kind, layer, timestep, dtype, source) is invalid."""


UNET_ALIASES = {"bottleneck": "mid_block", **{f"up_ft{i}": f"up_blocks.{i}" for i in range(4)}}
LAYER_ALIASES = {"shapes": UNET_ALIASES, "sd": UNET_ALIASES, "dit": {}, "sdxl": UNET_ALIASES, "pixart": {}, "sd3": {},
                 "flux": {}}
#: blocks of the kind's public checkpoints, for a hub model whose config is not on disk yet (UNets: resolution levels)
_DEFAULT_DEPTH = {"shapes": 3, "sd": 4, "sdxl": 3, "dit": 28, "pixart": 28, "sd3": 24, "flux": (19, 38)}
#: loader options (config ``models.<name>.options``) each kind accepts beyond the common ones
KIND_OPTIONS = {"pixart": ("max_sequence_length",), "sd3": ("max_sequence_length", "t5"),
                "flux": ("max_sequence_length", "guidance")}
#: model kinds with a text-conditioned denoiser whose empty prompt is the unconditional branch
TEXT_KINDS = ("shapes", "sd", "sdxl", "pixart", "sd3", "flux")
#: class-conditional kinds: the null class is the unconditional branch; the information stage localizes class labels
CLASS_KINDS = ("dit",)
#: kinds trained by flow matching (``flow.py``): their timesteps are s x 1000
FLOW_KINDS = ("sd3", "flux")


def local_config(source: str, *parts: str) -> dict | None:
    path = Path(source).joinpath(*parts)
    return json.loads(path.read_text()) if path.is_file() else None


def unet_block_names(n_down: int, n_up: int) -> list[str]:
    """Block outputs of a UNet2DConditionModel in forward order."""
    return [f"down_blocks.{i}" for i in range(n_down)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(n_up)]


def static_layers(kind: str, source: str) -> list[str]:
    """Hookable layer paths (forward order) of the model of ``kind`` at ``source``."""
    if kind == "flux":
        cfg = local_config(source, "transformer", "config.json")
        double, single = (cfg["num_layers"], cfg["num_single_layers"]) if cfg else _DEFAULT_DEPTH["flux"]
        return [f"transformer_blocks.{i}" for i in range(double)] + \
            [f"single_transformer_blocks.{i}" for i in range(single)]
    if kind in ("dit", "pixart", "sd3"):
        cfg = local_config(source, "transformer", "config.json")
        return [f"transformer_blocks.{i}" for i in range(cfg["num_layers"] if cfg else _DEFAULT_DEPTH[kind])]
    cfg = local_config(source, "unet", "config.json")
    n = len(cfg["block_out_channels"]) if cfg else _DEFAULT_DEPTH[kind]
    return unet_block_names(n, n)


def static_num_timesteps(source: str) -> int:
    """Training timesteps of the model's scheduler (its config when local, else the usual 1000)."""
    cfg = local_config(source, "scheduler", "scheduler_config.json")
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
    if str(cfg.get("_class_name", "")).startswith("FlowMatch"):  # s = t / n (t = 0 at half a step): 2 log((1-s)/s)
        return [2 * math.log((n - max(t, 0.5)) / max(t, 0.5)) for t in range(n)]
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
    the kind's usual schedule (Stable Diffusion's, about -5.4 .. 7.1; a shapes model not trained yet, DiT and
    PixArt: DDPM's linear schedule, about -10.1 .. 9.2; flow matching: about -13.8 .. 15.2)."""
    default = {"beta_schedule": "linear", "num_train_timesteps": 1000} if kind in ("shapes", "dit", "pixart") \
        else {"_class_name": "FlowMatchEulerDiscreteScheduler"} if kind in FLOW_KINDS else SD_SCHEDULE
    table = schedule_log_snr(local_config(source, "scheduler", "scheduler_config.json") or default)
    return min(table), max(table)


#: words in a model's name that mark a timestep-distilled model (few-step sampling)
DISTILLED_NAMES = ("turbo", "schnell", "lightning", "lcm", "hyper")


def distillation(kind: str, source: str, transformer_config: dict | None = None) -> str | None:
    """Why the model's denoising errors are not an MMSE estimate over the whole log-SNR range (a guidance- or
    timestep-distilled model), or None."""
    name = str(source).lower()
    if any(word in name for word in DISTILLED_NAMES):
        return "timestep-distilled (a few-step model: its errors away from its few sampling timesteps are not MMSE)"
    if kind == "flux" and (transformer_config or {}).get("guidance_embeds"):
        return ("guidance-distilled (its output imitates classifier-free guidance at the given scale: neither "
                "branch is a conditional or unconditional MMSE denoiser)")
    return None


def warn_if_distilled(kind: str, source: str, transformer_config=None) -> str | None:
    """Log a warning for a distilled model (``distillation``)."""
    why = distillation(kind, source, dict(transformer_config) if transformer_config is not None else None)
    if why:
        log.warning("%s model %r is %s; its features are fine to study, but the information estimators' denoising "
                    "errors are not an MMSE estimate over the whole log-SNR range (docs/reference.md)", kind, source,
                    why)
    return why


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
KIND_PIPELINES = {"sd": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), "dit": ("DiTPipeline",),
                  "sdxl": ("StableDiffusionXLPipeline",), "pixart": ("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
                  "sd3": ("StableDiffusion3Pipeline",), "flux": ("FluxPipeline",)}
#: pipelines of families difflens has no adapter for (yet), with the family's name
UNSUPPORTED_PIPELINES = {
    "StableDiffusionXLImg2ImgPipeline": "SDXL refiner", "StableDiffusionXLInpaintPipeline": "SDXL inpainting",
    "StableDiffusionInpaintPipeline": "an inpainting Stable Diffusion", "StableDiffusionDepth2ImgPipeline":
    "a depth-conditioned Stable Diffusion", "FluxFillPipeline": "FLUX.1 Fill", "FluxKontextPipeline":
    "FLUX.1 Kontext",
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
        if KNOWN_HUB_PIPELINES.get(source, KIND_PIPELINES[kind][0]) not in KIND_PIPELINES[kind]:
            raise _refusal(kind, f"{source!r}", KNOWN_HUB_PIPELINES[source])
        return
    pipeline = (local_config(str(folder), "model_index.json") or {}).get("_class_name", "")
    if pipeline and pipeline not in KIND_PIPELINES[kind]:
        raise _refusal(kind, f"{source!r} ({folder / 'model_index.json'})", pipeline)
    unet = local_config(str(folder), "unet", "config.json") or {}
    if kind == "sdxl" and unet and unet.get("addition_embed_type") != "text_time":
        raise ModelConfigError(f"{source!r}: its UNet takes no SDXL text-and-time conditions (addition_embed_type "
                               f"{unet.get('addition_embed_type')!r}); kind 'sdxl' drives StableDiffusionXLPipeline "
                               f"UNets only")
    if kind == "sd" and unet.get("addition_embed_type"):
        raise _refusal(kind, f"{source!r} (its UNet takes {unet['addition_embed_type']!r} added conditions)",
                       "StableDiffusionXLPipeline")
    if kind == "sd" and unet.get("in_channels", 4) != 4:
        raise ModelConfigError(f"{source!r}: its UNet takes {unet['in_channels']} input channels (an inpainting or "
                               f"depth model); kind 'sd' drives text-to-image UNets of 4 latent channels only")
