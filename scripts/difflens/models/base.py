"""One interface for every diffusion backbone difflens looks into.

A ``DiffusionModel`` wraps a denoiser, its noise schedule, its image encoder (VAE, or a fixed reshape for pixel
models) and its condition encoder (text, or class labels). Shapes in docstrings: B batch, C channels, H/W spatial.

Noise conventions (used by extraction and by the information estimators alike):
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` and, by log-SNR ``a = log(abar / (1 - abar))``,
``x_a = sqrt(sigmoid(a)) x_0 + sqrt(sigmoid(-a)) eps``; a continuous ``a`` is denoised at the discrete timestep
whose log-SNR is nearest.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from . import catalog
from .catalog import ModelConfigError

log = logging.getLogger(__name__)


#: what a job can ask ``from_pretrained`` to load: the image encoder (VAE; a fixed reshape for pixel models), the
#: denoiser (UNet or transformer) and the condition encoder (text encoder and tokenizer; class names for DiT)
COMPONENTS = ("vae", "denoiser", "text")


def check_components(components, source) -> tuple[str, ...]:
    """``None`` = all; else a subset of ``COMPONENTS`` (ModelConfigError naming the bad one)."""
    if components is None:
        return COMPONENTS
    bad = [c for c in components if c not in COMPONENTS]
    if bad or not components:
        raise ModelConfigError(f"model {source!r}: components {list(components)} must be a non-empty subset of "
                               f"{list(COMPONENTS)}")
    return tuple(c for c in COMPONENTS if c in components)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once every requested layer has been seen."""


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; or one of float32/float16/bfloat16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    allowed = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in allowed:
        raise ModelConfigError(f"dtype {dtype!r} is not one of {['auto', *allowed]}")
    if device.type == "cpu" and dtype == "float16":
        return torch.float32  # half matmuls are unsupported or very slow on CPUs
    return allowed[dtype]


def place(module: torch.nn.Module | None, device: torch.device, dtype: torch.dtype) -> torch.nn.Module | None:
    """Move a module to the device, cast it only if its dtype differs (diffusers warns on every cast), eval mode.
    A component that was not loaded (None) stays None."""
    if module is None:
        return None
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval()


def model_index(source: str, local_files_only: bool) -> dict:
    """The pipeline's model_index.json (local folder or hub cache), {} when absent; {} with a warning naming the
    error when the hub's cannot be read (its id2label and pipeline flags are then not used)."""
    local = catalog.local_config(source, "model_index.json")
    if local is not None or Path(source).is_dir():
        return local or {}
    try:
        from diffusers import DiffusionPipeline
        return dict(DiffusionPipeline.load_config(source, local_files_only=local_files_only))
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read model_index.json (%s: %s): no class names from its id2label", source,
                    type(exc).__name__, exc)
        return {}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def log_snr_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(abar / (1 - abar)) per discrete timestep, float64."""
    abar = alphas_cumprod.to(torch.float64)
    return torch.log(abar / (1 - abar))


def nearest_timestep(logsnr: torch.Tensor, log_snr_table: torch.Tensor) -> torch.Tensor:
    """Discrete timestep whose log-SNR (``log_snr_table``, one per step) is nearest to each ``a``."""
    table = log_snr_table.to(logsnr.device)
    return (logsnr.to(torch.float64)[:, None] - table[None, :]).abs().argmin(dim=1)


#: how an image becomes the model's R x R input (config ``models.<name>.geometry``): ``crop``, the shorter side
#: resized to R and the centre kept (difflens's default); ``squash``, the whole image resized to R x R, its aspect
#: ratio not kept (the Info-Decomp code's 512 x 512 resize of COCO images and masks)
GEOMETRIES = ("crop", "squash")


def check_geometry(geometry: str, source: str = "") -> str:
    """``geometry`` if it is one of ``GEOMETRIES``, else a ModelConfigError naming the config key."""
    if geometry not in GEOMETRIES:
        model = f"model {source!r}: " if source else ""
        raise ModelConfigError(f"{model}geometry {geometry!r} (config key models.<name>.geometry) is not one of "
                               f"{list(GEOMETRIES)}")
    return geometry


def fit_square(im: Image.Image, r: int, resample=Image.BICUBIC, geometry: str = "crop") -> Image.Image:
    """The image geometry every model input goes through (``GEOMETRIES``): ``crop``, shorter side resized to ``r``,
    then a centre crop; ``squash``, the whole image resized to ``r`` x ``r``."""
    check_geometry(geometry)
    w, h = im.size
    if (w, h) == (r, r):
        return im
    if geometry == "squash":
        return im.resize((r, r), resample)
    scale = r / min(w, h)
    im = im.resize((max(r, round(w * scale)), max(r, round(h * scale))), resample)
    w, h = im.size
    left, top = (w - r) // 2, (h - r) // 2
    return im.crop((left, top, left + r, top + r))


class DiffusionModel(ABC):
    """Base class of the model adapters. Subclasses set ``kind`` and implement the abstract methods."""

    kind: ClassVar[str]
    def __init__(self, *, scheduler, device: torch.device, dtype: torch.dtype, resolution: int,
                 classes: list[str] | None = None, source: str = "", components=COMPONENTS, geometry: str = "crop"):
        self.components = tuple(components)
        self.geometry = check_geometry(geometry, source)
        self.scheduler = scheduler
        self.device = device
        self.dtype = dtype
        self.resolution = resolution
        self.classes = classes or []
        self.source = source
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        self.log_snr = log_snr_of(self.alphas_cumprod)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first
        self._pinned: dict[str, torch.Tensor] = {}  # set_condition entries, never evicted

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_pretrained(cls, source: str, *, dtype: str | torch.dtype = "auto",
                        device: str | torch.device | None = None, **kwargs) -> "DiffusionModel":
        """Load from a hub id or a local diffusers-style folder."""

    def require(self, component: str, what: str) -> None:
        """Fail clearly when ``what`` needs a component this model was loaded without."""
        if component not in self.components:
            raise ModelConfigError(f"{self.kind} model {self.source!r} was loaded without its {component} "
                                   f"(components={list(self.components)}), which {what} needs")

    @classmethod
    def static_layers(cls, source: str) -> list[str]:
        """Layer names of the model at ``source`` without loading weights (see ``catalog``)."""
        return catalog.static_layers(cls.kind, source)

    @classmethod
    def _load_settings(cls, source, device, dtype, unknown: dict) -> tuple[torch.device, torch.dtype]:
        """Reject unknown loader options (naming the allowed ``OPTIONS``); resolve device and dtype."""
        if unknown:
            raise ModelConfigError(f"{cls.kind} model {source!r}: unknown option(s) {sorted(unknown)}; allowed: "
                                   f"{list(getattr(cls, 'OPTIONS', ()))}")
        device = torch.device(device) if device else default_device()
        return device, resolve_dtype(dtype, device)

    # ---- encoders -----------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, R, R) float32 in [-1, 1], bicubic, through the model's ``geometry`` (``crop``:
        shorter side resized to R, centre crop; ``squash``: the whole image resized to R x R)."""
        out = [np.asarray(fit_square(im.convert("RGB"), self.resolution, geometry=self.geometry), dtype=np.float32)
               for im in images]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2) / 127.5 - 1.0

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> latents (B, C, h, w), float32 (VAE mode x scaling factor, or a reshape)."""

    @abstractmethod
    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Uncached condition encoding of a batch of prompts (text models) or class names (class models)."""

    #: most prompt encodings kept (least recently used evicted): ARO's ~125k COCO-Order prompts, unbounded, would
    #: hold ~20 GB of SD text states on the GPU; a few thousand cover every prompt of a batch many times over
    text_cache_size: int = 4096
    #: and at most this many bytes of them after a call: an SD3 / FLUX.1 / PixArt condition (hundreds of 4096-wide
    #: T5 tokens) takes 5-8 MB, twenty times SD's, so 4096 of them would hold 20-34 GB of the GPU
    text_cache_bytes: int = 2 * 2 ** 30

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Condition tensor for each prompt, batched; each distinct prompt is encoded once and kept in a
        least-recently-used cache of ``text_cache_size`` entries and, after the call, ``text_cache_bytes``
        (``set_condition`` entries are never evicted)."""
        cache = self._text_cache
        pending = [p for p in dict.fromkeys(prompts) if p not in cache and p not in self._pinned]
        if len(dict.fromkeys(prompts)) > self.text_cache_size:
            raise ValueError(f"{len(set(prompts))} distinct prompts in one call exceed text_cache_size "
                             f"{self.text_cache_size}: split the call")
        if pending:
            self.require("text", f"encoding the prompt(s) {pending[:3]}")
            with torch.no_grad():
                enc = self._encode_prompts(pending)
            for p, e in zip(pending, enc):
                cache[p] = e
        out = []
        for p in prompts:
            if p in self._pinned:
                out.append(self._pinned[p])
            else:
                cache.move_to_end(p)
                out.append(cache[p])
        entry = out[0].numel() * out[0].element_size() if out else 1
        while len(cache) > min(self.text_cache_size, max(1, self.text_cache_bytes // entry)):
            cache.popitem(last=False)
        return torch.stack(out)

    @property
    def attention_tokenizer(self):
        """(tokenizer, length) of the text tokens the denoiser's attention sees, for a word's token positions."""
        return self.tokenizer, self.tokenizer.model_max_length

    def set_condition(self, prompt: str, condition: torch.Tensor) -> None:
        """Use ``condition`` for ``prompt`` without the condition encoder (e.g. a stored empty-prompt encoding)."""
        self._pinned[prompt] = condition.to(self.device)

    # ---- noise --------------------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t a (B,) integer tensor."""
        abar = self.alphas_cumprod.to(x0.device)[t.long()].to(torch.float32).view(-1, *[1] * (x0.dim() - 1))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    @staticmethod
    def add_noise_logsnr(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        """x_a = sqrt(sigmoid(a)) x0 + sqrt(sigmoid(-a)) noise, a a (B,) float tensor."""
        a = logsnr.to(x0.device, torch.float32).view(-1, *[1] * (x0.dim() - 1))
        return torch.sigmoid(a).sqrt() * x0 + torch.sigmoid(-a).sqrt() * noise

    def timestep_for_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        """Discrete timestep whose log-SNR is nearest to each ``a``."""
        return nearest_timestep(logsnr, self.log_snr)

    def check_timestep(self, t: int) -> None:
        if not 0 <= int(t) < self.num_train_timesteps:
            raise ModelConfigError(f"timestep {t} is outside [0, {self.num_train_timesteps - 1}] of {self.source}")

    # ---- denoiser -----------------------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Raw denoiser call in the model's dtype; returns predicted noise (B, C, h, w)."""

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps_hat(x_t, t | cond) as float32; ``t`` an int or a (B,) tensor."""
        self.require("denoiser", "denoising")
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((x_t.shape[0],), int(t), dtype=torch.long)
        with torch.no_grad():
            out = self._forward(x_t.to(self.device, self.dtype), t.to(self.device), cond.to(self.device))
        return out.float()

    # ---- layers and hooks ---------------------------------------------------------------------------------
    @abstractmethod
    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        """Every hookable block, keyed by module path, in the order the forward pass runs them."""

    def layer_output_to_map(self, name: str, output) -> torch.Tensor:
        """A block's raw output -> (B, C, H, W) map. UNet blocks return it as is (or first of a tuple)."""
        return output[0] if isinstance(output, tuple) else output

    def layers(self) -> list[str]:
        return list(self.layer_modules())

    def canonical_layer(self, name: str) -> str:
        """Module path of a layer given by path or alias; raises ModelConfigError listing the choices."""
        return catalog.resolve_layer(self.kind, self.source, name, available=list(self.layer_modules()))

    def capture(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: torch.Tensor, layers: list[str],
                stop_early: bool = True) -> dict[str, torch.Tensor]:
        """One forward pass with hooks on ``layers``; returns {requested name: (B, C, H, W) map}.

        With ``stop_early`` the pass ends right after the deepest requested layer has run.
        """
        modules = self.layer_modules()
        order = list(modules)
        paths = {name: self.canonical_layer(name) for name in layers}
        wanted = set(paths.values())
        last = max(wanted, key=order.index)
        got: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(path):
            def hook(_module, _inputs, output):
                got[path] = self.layer_output_to_map(path, output)
                if stop_early and path == last:
                    raise _StopForward
            return hook

        for path in wanted:
            handles.append(modules[path].register_forward_hook(make_hook(path)))
        try:
            self.denoise(x_t, t, cond)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return {name: got[path] for name, path in paths.items()}


class VAELatentsMixin:
    """``encode_images`` / ``decode_latents`` through an ``AutoencoderKL`` at ``self.vae`` (latent diffusion models).

    latents = (posterior MODE - shift) x scaling factor: the deterministic encoding, never a sample.
    """

    vae: torch.nn.Module
    #: images per VAE call (the VAE encoder costs more than a UNet pass at 512 px)
    vae_batch_size: int = 16

    @staticmethod
    def load_vae(source: str, dtype: torch.dtype, components, **load):
        """The ``vae`` subfolder's AutoencoderKL when ``components`` asks for it, else only its config (for the
        scale factor): returns (module or None, config)."""
        from diffusers import AutoencoderKL

        if "vae" in components:
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **load)
            return vae, vae.config
        return None, AutoencoderKL.load_config(source, subfolder="vae", **load)

    @classmethod
    def load_denoiser(cls, loader, source: str, subfolder: str, components, dtype, local_files_only: bool):
        """(denoiser or None, its config, VAE or None, the VAE's config) of a pipeline folder, each module loaded
        only when ``components`` asks for it; a distilled model is warned about (``catalog.warn_if_distilled``)."""
        from .text import load_part

        load = {"local_files_only": local_files_only}
        net = load_part(loader, source, subfolder, "denoiser" in components, dtype, **load)
        config = net.config if net is not None else loader.load_config(source, subfolder=subfolder, **load)
        vae, vae_config = cls.load_vae(source, dtype, components, **load)
        catalog.warn_if_distilled(cls.kind, source, config)
        return net, config, vae, vae_config

    @staticmethod
    def config_scale_factor(vae_config) -> int:
        """Pixels per latent cell from a VAE config (dict or FrozenDict): 2 ** (number of blocks - 1)."""
        return 2 ** (len(vae_config["block_out_channels"]) - 1)

    def _vae_shift_scale(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(getattr(cfg, "shift_factor", None) or 0.0), float(cfg.scaling_factor)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, C, R/f, R/f) float32 latents, in chunks of ``vae_batch_size``."""
        self.require("vae", "encoding images")
        shift, scale = self._vae_shift_scale()
        vae_dtype = next(self.vae.parameters()).dtype
        out = []
        with torch.no_grad():
            for chunk in pixels.split(self.vae_batch_size):
                mode = self.vae.encode(chunk.to(self.device, vae_dtype)).latent_dist.mode()
                out.append((mode.float() - shift) * scale)
        return torch.cat(out)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode_images`` (up to the VAE's reconstruction error): float32 images in [-1, 1]."""
        self.require("vae", "decoding latents")
        shift, scale = self._vae_shift_scale()
        vae_dtype = next(self.vae.parameters()).dtype
        out = []
        with torch.no_grad():
            for chunk in latents.split(self.vae_batch_size):
                z = chunk.to(self.device, torch.float32) / scale + shift
                out.append(self.vae.decode(z.to(vae_dtype)).sample.float().clamp(-1, 1))
        return torch.cat(out)
