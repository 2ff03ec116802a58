"""Adapter of Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``, an MMDiT, + CLIP-L, CLIP-G, optional T5 +
``AutoencoderKL`` with 16 latent channels), a flow-matching model (``flow.py``).

Conditions as ``StableDiffusion3Pipeline`` builds them: the penultimate hidden states of the two CLIPs side by
side, zero-padded to the joint attention width, followed by T5's ``max_sequence_length`` (256) tokens, or by as many
zeros when the model is loaded with ``t5: false`` (SD3 was trained to run without T5, at some cost in prompt
following); the pooled vector is the two CLIPs' projected embeddings side by side. Joint blocks
``transformer_blocks.i`` return (text tokens, image tokens): the image stream becomes the map. The timestep passed to
the transformer is ``s x 1000``, as the pipeline's scheduler gives it.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import DiffusionModel, ModelConfigError, VAELatentsMixin, check_components, place
from .conditions import ConditionLayout
from .flow import FlowMatchingMixin, flow_schedule
from .text import clip_states, load_part, t5_states
from .tokens import TokenMapMixin


class StableDiffusion3Model(FlowMatchingMixin, TokenMapMixin, VAELatentsMixin, DiffusionModel):
    """SD3 / SD3.5; ``kind: sd3``. Layers: transformer_blocks.0 .. transformer_blocks.23 (SD3.5-medium)."""

    kind = "sd3"
    image_stream = 1
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry",
               "max_sequence_length", "t5")

    def __init__(self, *, transformer, vae, encoders, transformer_config, max_sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.transformer = place(transformer, self.device, self.dtype)
        self.vae = place(vae, self.device, self.dtype)
        (self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2), (self.text_encoder_3,
                                                                                       self.tokenizer_3) = encoders
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            setattr(self, name, place(getattr(self, name), self.device, self.dtype))
        self.patch_size = int(transformer_config["patch_size"])
        self.max_sequence_length = int(max_sequence_length)
        clip_len = self.tokenizer.model_max_length if self.tokenizer is not None else 77
        self.layout = ConditionLayout(clip_len + self.max_sequence_length,
                                      int(transformer_config["joint_attention_dim"]),
                                      int(transformer_config["pooled_projection_dim"]))

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes=None, components=None, geometry: str = "crop",
                        max_sequence_length: int = 256, t5: bool = True, **unknown) -> "StableDiffusion3Model":
        """Load from a hub id (``stabilityai/stable-diffusion-3.5-medium``) or a StableDiffusion3Pipeline folder;
        ``t5: false`` leaves the T5 encoder out (its tokens are zeros, as the pipeline does without it)."""
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        from diffusers import SD3Transformer2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

        src, load = str(source), {"local_files_only": local_files_only}
        transformer, config, vae, vae_config = cls.load_denoiser(SD3Transformer2DModel, src, "transformer",
                                                                 components, dtype, local_files_only)
        text = "text" in components
        if text and t5 and Path(src).is_dir() and not (Path(src) / "text_encoder_3").is_dir():
            raise ModelConfigError(f"sd3 model {src!r} has no text_encoder_3 folder (T5): it was fetched for "
                                   f"options.t5: false; set that, or delete {src} to fetch the model with its T5")
        encoders = [(load_part(CLIPTextModelWithProjection, src, f"text_encoder{i}", text, dtype, **load),
                     load_part(CLIPTokenizer, src, f"tokenizer{i}", text, **load)) for i in ("", "_2")]
        encoders.append((load_part(T5EncoderModel, src, "text_encoder_3", text and t5, dtype, **load),
                         load_part(AutoTokenizer, src, "tokenizer_3", text and t5, **load)))
        res = int(resolution) if resolution else config["sample_size"] * cls.config_scale_factor(vae_config)
        return cls(transformer=transformer, vae=vae, encoders=encoders, transformer_config=config,
                   max_sequence_length=max_sequence_length, scheduler=flow_schedule(cls.flow_steps), device=device,
                   dtype=dtype, resolution=res, classes=classes, source=src, components=components, geometry=geometry)

    @property
    def attention_text(self) -> tuple[bool, int]:
        """(text first?, text tokens recorded) of the joint attention: the image tokens come first, and the CLIP
        tokens (the first ``tokenizer.model_max_length`` of the text) are the ones a word is found in."""
        return False, self.tokenizer.model_max_length

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        seq_l, pooled_l = clip_states(self.text_encoder, self.tokenizer, prompts, self.device)
        seq_g, pooled_g = clip_states(self.text_encoder_2, self.tokenizer_2, prompts, self.device)
        width = self.layout.width
        clip = F.pad(torch.cat([seq_l, seq_g], dim=-1), (0, width - seq_l.shape[-1] - seq_g.shape[-1]))
        if self.text_encoder_3 is not None:
            t5, _ = t5_states(self.text_encoder_3, self.tokenizer_3, prompts, self.device, self.max_sequence_length,
                              False)
        else:
            t5 = clip.new_zeros((len(prompts), self.max_sequence_length, width))
        return self.layout.pack(torch.cat([clip, t5], dim=1), torch.cat([pooled_l, pooled_g], dim=-1))

    def _velocity(self, x_s, s, cond):
        seq, pooled, _ = self.layout.unpack(cond)
        self._grid = (x_s.shape[-2] // self.patch_size, x_s.shape[-1] // self.patch_size)
        return self.transformer(x_s, encoder_hidden_states=seq.to(self.dtype), pooled_projections=pooled.to(self.dtype),
                                timestep=(s * self.flow_steps).to(self.device)).sample  # float32, as the pipeline's

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        self.require("denoiser", "listing layers")
        return OrderedDict((f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer.transformer_blocks))
