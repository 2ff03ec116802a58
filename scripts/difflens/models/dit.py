"""Adapter of the class-conditional Diffusion Transformer (``DiTTransformer2DModel`` + ``AutoencoderKL``).

Conditions are class names: they map to label ids through, in this order, the ``classes`` option (a list, or a
.json / .txt file), the ``id2label`` of the pipeline's ``model_index.json`` (hub DiT folders carry ImageNet's; a
``save_pretrained`` round trip drops it), or the ``classes`` of the folder's difflens model card. Every
comma-separated synonym of a label names its class (as in ``DiTPipeline``), names match case-insensitively, a
decimal string is taken as the id itself, and the empty prompt is the null class (id ``num_embeds_ada_norm``), the
unconditional denoiser of classifier-free guidance.

Blocks ``transformer_blocks.i`` output tokens (B, N, D) in row-major patch order, turned into (B, D, h, w) maps
(``tokens.TokenMapMixin``).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from .base import COMPONENTS, DiffusionModel, ModelConfigError, VAELatentsMixin, check_components, place
from .base import model_index
from .catalog import MODEL_CARD
from .tokens import TokenMapMixin


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_class_names(classes) -> list[str]:
    """A ``classes`` option -> names by id: a list, or a path to a .json (list or {id: name}) or .txt (one a line)."""
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    path = Path(classes)
    if not path.is_file():
        raise ModelConfigError(f"dit classes {str(classes)!r} is neither a list nor an existing .json/.txt file")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return id2label_to_names(data) if isinstance(data, dict) else [str(c) for c in data]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def id2label_to_names(id2label: dict) -> list[str]:
    """{"0": "tench, Tinca tinca", ...} -> names ordered by id (ids must be 0..n-1)."""
    ids = sorted(int(k) for k in id2label)
    if ids != list(range(len(ids))):
        raise ModelConfigError(f"id2label ids are not 0..{len(ids) - 1}: {ids[:10]}...")
    return [str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids]


class DiTModel(TokenMapMixin, VAELatentsMixin, DiffusionModel):
    """DiT (facebook/DiT-XL-2-256 / -512); ``kind: dit``. Layers: transformer_blocks.0 .. transformer_blocks.27."""

    kind = "dit"
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry")

    def __init__(self, *, transformer, vae, transformer_config, **kwargs):
        super().__init__(**kwargs)
        self.transformer = place(transformer, self.device, self.dtype)
        self.vae = place(vae, self.device, self.dtype)
        self.null_class = int(transformer_config["num_embeds_ada_norm"])
        self.patch_size = int(transformer_config["patch_size"])
        self._grid: tuple[int, int] | None = None  # token grid (h, w) of the latest forward pass
        self.label_ids: dict[str, int] = {}
        for i, names in enumerate(self.classes):
            for name in str(names).split(","):
                self.label_ids.setdefault(name.strip().lower(), i)
        if len(self.classes) > self.null_class:
            raise ModelConfigError(f"{self.source}: {len(self.classes)} class names but the model has "
                                   f"{self.null_class} classes")

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes=None, components=None, geometry: str = "crop",
                        **unknown) -> "DiTModel":
        """Load from a hub id (``facebook/DiT-XL-2-256``) or a DiTPipeline folder; see the module doc for names.

        ``components``: a subset of ``("vae", "denoiser", "text")`` (None = all); "text" (class names) needs no
        weights and is always there, the transformer is loaded only for "denoiser" and the VAE only for "vae".
        """
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = tuple(c for c in COMPONENTS if c in check_components(components, source) or c == "text")
        from diffusers import DDPMScheduler, DiTTransformer2DModel

        src = str(source)
        load = {"local_files_only": local_files_only}
        transformer = DiTTransformer2DModel.from_pretrained(src, subfolder="transformer", torch_dtype=dtype, **load) \
            if "denoiser" in components else None
        transformer_config = transformer.config if transformer is not None else \
            DiTTransformer2DModel.load_config(src, subfolder="transformer", **load)
        vae, vae_config = cls.load_vae(src, dtype, components, **load)
        if classes is not None:
            names = read_class_names(classes)
        elif id2label := model_index(src, local_files_only).get("id2label"):
            names = id2label_to_names(id2label)
        else:
            names = (read_json(Path(src) / MODEL_CARD) or {}).get("classes") or []
        res = int(resolution) if resolution else \
            transformer_config["sample_size"] * cls.config_scale_factor(vae_config)
        return cls(transformer=transformer, vae=vae, transformer_config=transformer_config,
                   scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler", **load),
                   device=device, dtype=dtype, resolution=res, classes=names, source=src, components=components,
                   geometry=geometry)

    # ---- conditions ---------------------------------------------------------------------------------------
    def label_id(self, name: str) -> int:
        """Class name (any synonym, any case), decimal id, or "" (null class) -> label id."""
        key = name.strip().lower()
        if key == "":
            return self.null_class
        if key in self.label_ids:
            return self.label_ids[key]
        if key.isdigit() and int(key) < self.null_class:
            return int(key)
        known = sorted(self.label_ids)
        shown = known[:20] + ([f"... ({len(known)} names)"] if len(known) > 20 else [])
        raise ModelConfigError(f"unknown class {name!r} for dit model {self.source!r}; allowed: {shown}, a class "
                               f"id in [0, {self.null_class - 1}], or '' (unconditional)")

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.label_id(p) for p in prompts], dtype=torch.long)

    # ---- denoiser and layers ------------------------------------------------------------------------------
    def _forward(self, x_t, t, cond):
        c = x_t.shape[1]
        self._grid = (x_t.shape[-2] // self.patch_size, x_t.shape[-1] // self.patch_size)
        out = self.transformer(x_t, timestep=t, class_labels=cond.long()).sample
        return out[:, :c]  # the epsilon half; the rest is the learned variance

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        self.require("denoiser", "listing layers")
        return OrderedDict((f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer.transformer_blocks))
