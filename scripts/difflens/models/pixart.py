"""Adapter of PixArt-alpha / PixArt-Sigma (``PixArtTransformer2DModel`` + T5 + ``AutoencoderKL``).

PixArt is a variance-preserving epsilon model (DDPM's linear betas) with a learned variance (its output's second
half, dropped). The T5 prompt (``max_sequence_length`` tokens: 300 for Sigma, 120 for alpha) goes in with its
padding mask, as ``PixArtSigmaPipeline`` passes it. PixArt-alpha's 1024 px models also take the image's resolution
and aspect ratio (``use_additional_conditions``): an uncropped R x R image, ratio 1. Blocks ``transformer_blocks.i``
output image tokens, turned into maps on the patch grid.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .base import DiffusionModel, VAELatentsMixin, check_components, model_index, place
from .conditions import ConditionLayout
from .text import load_part, t5_states
from .tokens import TokenMapMixin


class PixArtModel(TokenMapMixin, VAELatentsMixin, DiffusionModel):
    """PixArt-alpha / -Sigma; ``kind: pixart``. Layers: transformer_blocks.0 .. transformer_blocks.27."""

    kind = "pixart"
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry",
               "max_sequence_length")

    def __init__(self, *, transformer, vae, text_encoder, tokenizer, transformer_config, max_sequence_length: int,
                 **kwargs):
        super().__init__(**kwargs)
        self.transformer = place(transformer, self.device, self.dtype)
        self.vae = place(vae, self.device, self.dtype)
        self.text_encoder = place(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer
        self.patch_size = int(transformer_config["patch_size"])
        # PixArt-alpha's 1024 px configs leave the flag unset: the module turns it on for a 128-cell sample size
        flag = transformer_config.get("use_additional_conditions")
        self.extra_conditions = bool(transformer.use_additional_conditions if transformer is not None else
                                     flag if flag is not None else transformer_config["sample_size"] == 128)
        self.layout = ConditionLayout(int(max_sequence_length), int(transformer_config["caption_channels"]),
                                      mask=True)

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes=None, components=None, geometry: str = "crop",
                        max_sequence_length: int | None = None, **unknown) -> "PixArtModel":
        """Load from a hub id (``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS``) or a PixArt pipeline folder;
        ``max_sequence_length`` defaults to the pipeline's: 120 for PixArt-alpha, 300 for PixArt-Sigma."""
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        from diffusers import DDPMScheduler, PixArtTransformer2DModel
        from transformers import AutoTokenizer, T5EncoderModel

        src, load = str(source), {"local_files_only": local_files_only}
        transformer, config, vae, vae_config = cls.load_denoiser(PixArtTransformer2DModel, src, "transformer",
                                                                 components, dtype, local_files_only)
        text = "text" in components
        res = int(resolution) if resolution else config["sample_size"] * cls.config_scale_factor(vae_config)
        return cls(transformer=transformer, vae=vae, transformer_config=config,
                   text_encoder=load_part(T5EncoderModel, src, "text_encoder", text, dtype, **load),
                   tokenizer=load_part(AutoTokenizer, src, "tokenizer", text, **load),
                   max_sequence_length=max_sequence_length or (
                       120 if model_index(src, local_files_only).get("_class_name") == "PixArtAlphaPipeline" else 300),
                   scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler", **load),
                   device=device, dtype=dtype, resolution=res, classes=classes, source=src, components=components,
                   geometry=geometry)

    @property
    def attention_tokenizer(self):
        return self.tokenizer, self.layout.seq_len

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        seq, mask = t5_states(self.text_encoder, self.tokenizer, prompts, self.device, self.layout.seq_len, True)
        return self.layout.pack(seq, mask=mask)

    def _forward(self, x_t, t, cond):
        seq, _, mask = self.layout.unpack(cond)
        n, r = len(x_t), float(self.resolution)
        self._grid = (x_t.shape[-2] // self.patch_size, x_t.shape[-1] // self.patch_size)
        added = {"resolution": None, "aspect_ratio": None}
        if self.extra_conditions:
            added = {"resolution": torch.tensor([[r, r]] * n, device=self.device, dtype=self.dtype),
                     "aspect_ratio": torch.ones((n, 1), device=self.device, dtype=self.dtype)}
        out = self.transformer(x_t, encoder_hidden_states=seq.to(self.dtype), timestep=t, added_cond_kwargs=added,
                               encoder_attention_mask=mask.to(self.dtype)).sample
        return out[:, : x_t.shape[1]]  # the epsilon half; the rest is the learned variance

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        self.require("denoiser", "listing layers")
        return OrderedDict((f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer.transformer_blocks))
