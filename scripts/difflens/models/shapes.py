"""Adapter of the shapes-world model (architecture: ``difflens.models.shapes_arch``): pixels via a 2x2 space-to-depth."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .base import ModelConfigError, check_components
from .catalog import MODEL_CARD
from .shapes_arch import images_to_latents, latents_to_images
from .unet import TextUNetModel


class ShapesModel(TextUNetModel):
    kind = "shapes"
    OPTIONS = ("dtype", "device", "components", "geometry")

    def __init__(self, *, space_to_depth: int, **kwargs):
        super().__init__(**kwargs)
        self.space_to_depth = space_to_depth

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, components=None, geometry: str = "crop",
                        **unknown) -> "ShapesModel":
        """Load a trained shapes model folder; ``components`` as for the other adapters (the "vae" is a reshape)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, PreTrainedTokenizerFast

        root = Path(source)
        card_path = root / MODEL_CARD
        if not card_path.is_file():
            raise ModelConfigError(f"shapes model {source!r}: no {MODEL_CARD} (train it with the train_shapes_model "
                                   f"rule, or point models.<name>.source at a trained model folder)")
        card = json.loads(card_path.read_text())
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        arch = card["train_config"]["arch"]
        text = "text" in components
        return cls(unet=UNet2DConditionModel.from_pretrained(root / "unet") if "denoiser" in components else None,
                   text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder") if text else None,
                   tokenizer=PreTrainedTokenizerFast.from_pretrained(root / "tokenizer") if text else None,
                   scheduler=DDPMScheduler.from_pretrained(root / "scheduler"),
                   device=device, dtype=dtype, resolution=arch["image_size"], classes=card.get("classes"),
                   source=str(source), space_to_depth=arch["space_to_depth"], components=components,
                   geometry=geometry)

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return super()._encode_prompts([p.lower() for p in prompts])  # the word-level vocabulary is lower case

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return images_to_latents(pixels.float(), self.space_to_depth)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents_to_images(latents.float(), self.space_to_depth).clamp(-1, 1)
