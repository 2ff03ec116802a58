"""Adapter of the shapes-world model (see ``difflens.shapes_model``): pixels via a 2x2 space-to-depth."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..shapes_model import MODEL_CARD, images_to_latents, latents_to_images
from .base import ModelConfigError
from .unet import TextUNetModel


class ShapesModel(TextUNetModel):
    kind = "shapes"
    OPTIONS = ("dtype", "device")

    def __init__(self, *, space_to_depth: int, **kwargs):
        super().__init__(**kwargs)
        self.space_to_depth = space_to_depth

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, **unknown) -> "ShapesModel":
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        root = Path(source)
        card_path = root / MODEL_CARD
        if not card_path.is_file():
            raise ModelConfigError(f"shapes model {source!r}: no {MODEL_CARD} (train it with the train_shapes_model "
                                   f"rule, or point models.<name>.source at a trained model folder)")
        card = json.loads(card_path.read_text())
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        arch = card["train_config"]["arch"]
        return cls(unet=UNet2DConditionModel.from_pretrained(root / "unet"),
                   text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
                   tokenizer=PreTrainedTokenizerFast.from_pretrained(root / "tokenizer"),
                   scheduler=DDPMScheduler.from_pretrained(root / "scheduler"),
                   device=device, dtype=dtype, resolution=arch["image_size"],
                   classes=card.get("classes"), source=str(source), space_to_depth=arch["space_to_depth"])

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return super()._encode_prompts([p.lower() for p in prompts])  # the word-level vocabulary is lower case

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return images_to_latents(pixels.float(), self.space_to_depth)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents_to_images(latents.float(), self.space_to_depth).clamp(-1, 1)
