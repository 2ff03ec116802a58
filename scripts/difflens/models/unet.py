"""Shared adapter code for text-conditioned ``UNet2DConditionModel`` backbones (the shapes model, Stable Diffusion).

Whatever the UNet was trained to predict (its scheduler's ``prediction_type``), ``denoise`` returns epsilon.
"""
from __future__ import annotations

from collections import OrderedDict
import torch

from .base import DiffusionModel, ModelConfigError, place

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def epsilon_from_prediction(pred: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor,
                            prediction_type: str) -> torch.Tensor:
    """Turn a denoiser output into predicted noise, in float32.

    ``abar`` holds alphas_cumprod[t] per sample (B,). With ``x_t = sqrt(abar) x0 + sqrt(1-abar) eps``:
    v = sqrt(abar) eps - sqrt(1-abar) x0, so eps = sqrt(abar) v + sqrt(1-abar) x_t; and a predicted x0 gives
    eps = (x_t - sqrt(abar) x0) / sqrt(1-abar).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ModelConfigError(f"prediction_type {prediction_type!r} is not one of {list(PREDICTION_TYPES)}")
    pred = pred.float()
    if prediction_type == "epsilon":
        return pred
    a = abar.to(pred.device, torch.float32).view(-1, *[1] * (pred.dim() - 1))
    x_t = x_t.to(pred.device, torch.float32)
    if prediction_type == "v_prediction":
        return a.sqrt() * pred + (1 - a).sqrt() * x_t
    return (x_t - a.sqrt() * pred) / (1 - a).sqrt()


class TextUNetModel(DiffusionModel):
    """A UNet denoiser conditioned on a text encoder's last hidden states (cross-attention). ``unet`` and
    ``text_encoder`` / ``tokenizer`` are None when the model was loaded without them (``components``)."""

    def __init__(self, *, unet, text_encoder, tokenizer, **kwargs):
        super().__init__(**kwargs)
        prediction_type = kwargs["scheduler"].config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ModelConfigError(f"{self.source}: scheduler prediction_type {prediction_type!r} is not one of "
                                   f"{list(PREDICTION_TYPES)}")
        self.prediction_type = prediction_type
        self.unet = place(unet, self.device, self.dtype)
        self.text_encoder = place(text_encoder, self.device, self.dtype)
        self.tokenizer = tokenizer

    def layer_modules(self) -> "OrderedDict[str, torch.nn.Module]":
        self.require("denoiser", "listing layers")
        mods = OrderedDict((f"down_blocks.{i}", b) for i, b in enumerate(self.unet.down_blocks))
        mods["mid_block"] = self.unet.mid_block
        mods.update((f"up_blocks.{i}", b) for i, b in enumerate(self.unet.up_blocks))
        return mods

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def to_epsilon(self, out, x_t, t):
        """The UNet's output (its first ``x_t`` channels) as predicted noise, whatever it was trained to predict."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return epsilon_from_prediction(out[:, : x_t.shape[1]], x_t, abar, self.prediction_type)

    def _forward(self, x_t, t, cond):
        return self.to_epsilon(self.unet(x_t, t, encoder_hidden_states=cond.to(self.dtype)).sample, x_t, t)
