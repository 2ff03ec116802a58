"""Adapter of Stable Diffusion XL (SDXL base, SDXL-Turbo): a ``UNet2DConditionModel`` with SDXL's added
conditions, two CLIP text encoders and an ``AutoencoderKL``.

Conditions as ``StableDiffusionXLPipeline`` builds them: the penultimate hidden states of CLIP-L (``text_encoder``)
and CLIP-G (``text_encoder_2``) side by side (2048 wide), CLIP-G's projected embedding as the pooled ``text_embeds``,
and the size-and-crop ``time_ids`` (R, R, 0, 0, R, R): an uncropped R x R image. When the folder's
``force_zeros_for_empty_prompt`` is true (SDXL base's), the empty prompt is all zeros, the unconditional branch the
pipeline uses. The SDXL VAE overflows in float16: with ``dtype: float16`` it runs in float32 (its
``force_upcast``); ``madebyollin/sdxl-vae-fp16-fix`` is the usual replacement to keep it in float16.
"""
from __future__ import annotations

import logging

import torch

from .base import VAELatentsMixin, check_components, model_index, place
from .conditions import ConditionLayout
from .text import clip_states, load_part
from .unet import TextUNetModel

log = logging.getLogger(__name__)


class StableDiffusionXLModel(VAELatentsMixin, TextUNetModel):
    """SDXL; ``kind: sdxl``. Layers: down_blocks.i, mid_block (alias bottleneck), up_blocks.i (up_fti)."""

    kind = "sdxl"
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry")

    def __init__(self, *, vae, text_encoder_2, tokenizer_2, zeros_for_empty: bool, unet_config, **kwargs):
        super().__init__(**kwargs)
        vae_dtype = self.dtype
        if vae is not None and self.dtype == torch.float16 and vae.config.get("force_upcast", True):
            log.info("%s: the SDXL VAE runs in float32 (it overflows in float16; force_upcast)", self.source)
            vae_dtype = torch.float32
        self.vae = place(vae, self.device, vae_dtype)
        self.text_encoder_2 = place(text_encoder_2, self.device, self.dtype)
        self.tokenizer_2 = tokenizer_2
        self.zeros_for_empty = zeros_for_empty
        # the UNet's cross-attention width (both CLIPs side by side) and pooled width (its added-condition input
        # less the six time ids' embeddings); CLIP's 77 tokens when no tokenizer is loaded
        pooled = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
        self.layout = ConditionLayout(self.tokenizer.model_max_length if self.tokenizer is not None else 77,
                                      int(unet_config["cross_attention_dim"]), int(pooled))

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes: list[str] | None = None, components=None,
                        geometry: str = "crop", **unknown) -> "StableDiffusionXLModel":
        """Load from a hub id (``stabilityai/stable-diffusion-xl-base-1.0``) or a StableDiffusionXLPipeline folder;
        ``resolution`` defaults to the UNet's sample size x the VAE's scale factor (1024 for SDXL base)."""
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        src, load = str(source), {"local_files_only": local_files_only}
        text = "text" in components
        unet, unet_config, vae, vae_config = cls.load_denoiser(UNet2DConditionModel, src, "unet", components, dtype,
                                                               local_files_only)
        index = model_index(src, local_files_only)
        res = int(resolution) if resolution else unet_config["sample_size"] * cls.config_scale_factor(vae_config)
        return cls(unet=unet, vae=vae,
                   text_encoder=load_part(CLIPTextModel, src, "text_encoder", text, dtype, **load),
                   tokenizer=load_part(CLIPTokenizer, src, "tokenizer", text, **load),
                   text_encoder_2=load_part(CLIPTextModelWithProjection, src, "text_encoder_2", text, dtype, **load),
                   tokenizer_2=load_part(CLIPTokenizer, src, "tokenizer_2", text, **load),
                   zeros_for_empty=bool(index.get("force_zeros_for_empty_prompt", True)), unet_config=unet_config,
                   scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler", **load),
                   device=device, dtype=dtype, resolution=res, classes=classes, source=src, components=components,
                   geometry=geometry)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        seq_l, _ = clip_states(self.text_encoder, self.tokenizer, prompts, self.device)
        seq_g, pooled = clip_states(self.text_encoder_2, self.tokenizer_2, prompts, self.device)
        cond = self.layout.pack(torch.cat([seq_l, seq_g], dim=-1), pooled)
        if self.zeros_for_empty:
            cond[[i for i, p in enumerate(prompts) if p == ""]] = 0
        return cond

    def time_ids(self, n: int) -> torch.Tensor:
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]] * n, dtype=self.dtype, device=self.device)

    def _forward(self, x_t, t, cond):
        seq, pooled, _ = self.layout.unpack(cond)
        added = {"text_embeds": pooled.to(self.dtype), "time_ids": self.time_ids(len(x_t))}
        return self.to_epsilon(self.unet(x_t, t, encoder_hidden_states=seq.to(self.dtype), added_cond_kwargs=added)
                               .sample, x_t, t)

