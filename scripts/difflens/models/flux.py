"""Adapter of FLUX.1 (``FluxTransformer2DModel`` + CLIP-L + T5 + ``AutoencoderKL`` with 16 latent channels), a
flow-matching model (``flow.py``).

Latents go in packed, each 2 x 2 patch of latent cells one token of 4 C channels (``pack_latents``), with their
(0, row, column) position ids; the velocity comes back packed and is unpacked to (B, C, h, w). Conditions as
``FluxPipeline`` builds them: T5's ``max_sequence_length`` tokens (by default 512 for FLUX.1-dev, 256 for -schnell)
and CLIP-L's pooled embedding. The guidance-distilled FLUX.1-dev takes the guidance scale as an input (``guidance``, 3.5 as the
pipeline's default); -schnell has no guidance embedding. Double-stream blocks ``transformer_blocks.i`` and
single-stream blocks ``single_transformer_blocks.i`` both return (text tokens, image tokens); the image tokens,
on the (h/2, w/2) grid of the packed latents, become the map. The timestep and guidance are passed as
``s`` and the scale (the transformer multiplies both by 1000), as the pipeline passes them.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .base import DiffusionModel, VAELatentsMixin, check_components, place
from .catalog import ModelConfigError
from .conditions import ConditionLayout
from .flow import FlowMatchingMixin, flow_schedule
from .text import clip_states, load_part, t5_states
from .tokens import TokenMapMixin


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4 C), as ``FluxPipeline._pack_latents``."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of ``pack_latents``: (B, h/2 * w/2, 4 C) -> (B, C, h, w)."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    """(h/2 * w/2, 3) position ids (0, row, column) of the packed tokens."""
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(device)


class FluxModel(FlowMatchingMixin, TokenMapMixin, VAELatentsMixin, DiffusionModel):
    """FLUX.1-dev / -schnell; ``kind: flux``. Layers: transformer_blocks.0 .. 18, single_transformer_blocks.0 .. 37."""

    kind = "flux"
    image_stream = 1
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry",
               "max_sequence_length", "guidance")

    def __init__(self, *, transformer, vae, encoders, transformer_config, max_sequence_length: int,
                 guidance: float, **kwargs):
        super().__init__(**kwargs)
        self.transformer = place(transformer, self.device, self.dtype)
        self.vae = place(vae, self.device, self.dtype)
        (self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2) = encoders
        self.text_encoder = place(self.text_encoder, self.device, self.dtype)
        self.text_encoder_2 = place(self.text_encoder_2, self.device, self.dtype)
        self.guidance = float(guidance) if transformer_config.get("guidance_embeds") else None
        self.layout = ConditionLayout(int(max_sequence_length), int(transformer_config["joint_attention_dim"]),
                                      int(transformer_config["pooled_projection_dim"]))

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes=None, components=None, geometry: str = "crop",
                        max_sequence_length: int | None = None, guidance: float = 3.5, **unknown) -> "FluxModel":
        """Load from a hub id (``black-forest-labs/FLUX.1-schnell``) or a FluxPipeline folder; ``resolution``
        defaults to the transformer's 128 latent cells x the VAE's scale factor (1024), ``max_sequence_length`` to
        512 with a guidance embedding (FLUX.1-dev) and 256 without (FLUX.1-schnell, trained on 256 T5 tokens)."""
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        from diffusers import FluxTransformer2DModel
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

        src, load = str(source), {"local_files_only": local_files_only}
        transformer, config, vae, vae_config = cls.load_denoiser(FluxTransformer2DModel, src, "transformer",
                                                                 components, dtype, local_files_only)
        text = "text" in components
        encoders = [(load_part(CLIPTextModel, src, "text_encoder", text, dtype, **load),
                     load_part(CLIPTokenizer, src, "tokenizer", text, **load)),
                    (load_part(T5EncoderModel, src, "text_encoder_2", text, dtype, **load),
                     load_part(AutoTokenizer, src, "tokenizer_2", text, **load))]
        factor = cls.config_scale_factor(vae_config)
        res = int(resolution) if resolution else 128 * factor
        if res % (2 * factor):
            raise ModelConfigError(f"flux model {src!r}: resolution {res} (config key models.<name>.resolution) must "
                                   f"be a multiple of {2 * factor} (packed 2 x 2 latent cells of {factor} px)")
        return cls(transformer=transformer, vae=vae, encoders=encoders, transformer_config=config,
                   max_sequence_length=max_sequence_length or (512 if config.get("guidance_embeds") else 256),
                   guidance=guidance, scheduler=flow_schedule(cls.flow_steps),
                   device=device, dtype=dtype, resolution=res, classes=classes, source=src, components=components,
                   geometry=geometry)

    @property
    def attention_text(self) -> tuple[bool, int]:
        """(text first?, text tokens) of the joint attention: the T5 tokens come first."""
        return True, self.layout.seq_len

    @property
    def attention_tokenizer(self):
        return self.tokenizer_2, self.layout.seq_len

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        _, pooled = clip_states(self.text_encoder, self.tokenizer, prompts, self.device)
        seq, _ = t5_states(self.text_encoder_2, self.tokenizer_2, prompts, self.device, self.layout.seq_len, False)
        return self.layout.pack(seq, pooled)

    def _velocity(self, x_s, s, cond):
        seq, pooled, _ = self.layout.unpack(cond)
        b, _, h, w = x_s.shape
        self._grid = (h // 2, w // 2)
        guidance = None if self.guidance is None else torch.full((b,), self.guidance, device=self.device,
                                                                   dtype=self.dtype)
        out = self.transformer(pack_latents(x_s), encoder_hidden_states=seq.to(self.dtype),
                               pooled_projections=pooled.to(self.dtype), timestep=s.to(self.device, self.dtype),
                               img_ids=image_ids(h, w, self.device),
                               txt_ids=torch.zeros((seq.shape[1], 3), device=self.device), guidance=guidance).sample
        return unpack_latents(out, h, w)

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        self.require("denoiser", "listing layers")
        mods = OrderedDict((f"transformer_blocks.{i}", b) for i, b in enumerate(self.transformer.transformer_blocks))
        mods.update((f"single_transformer_blocks.{i}", b)
                    for i, b in enumerate(self.transformer.single_transformer_blocks))
        return mods
