"""Shared adapter code for text-conditioned ``UNet2DConditionModel`` backbones (the shapes model, Stable Diffusion)."""
from __future__ import annotations

from collections import OrderedDict
import torch

from .base import DiffusionModel, place


class TextUNetModel(DiffusionModel):
    """A UNet denoiser conditioned on a text encoder's last hidden states (cross-attention)."""


    def __init__(self, *, unet, text_encoder, tokenizer, **kwargs):
        super().__init__(**kwargs)
        self.unet = place(unet, self.device, self.dtype)
        self.text_encoder = place(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        mods = OrderedDict((f"down_blocks.{i}", b) for i, b in enumerate(self.unet.down_blocks))
        mods["mid_block"] = self.unet.mid_block
        mods.update((f"up_blocks.{i}", b) for i, b in enumerate(self.unet.up_blocks))
        return mods

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def _forward(self, x_t, t, cond):
        out = self.unet(x_t, t, encoder_hidden_states=cond.to(self.dtype)).sample
        return out[:, : x_t.shape[1]]
