"""The shapes world's text-conditioned diffusion model: architecture, construction and on-disk format.

Architecture (all diffusers / transformers classes, so the model loads like a hub model):

* images are mapped to "latents" by a lossless 2x2 space-to-depth (pixel unshuffle): a 32 px RGB image becomes
  12 x 16 x 16. This plays the VAE's role and makes training ~4x cheaper than on raw pixels;
* ``UNet2DConditionModel`` with cross-attention on a small ``CLIPTextModel`` (by default in the two lower resolution
  levels; ``block_types`` maps one flag per level to the diffusers block types), optionally also a global caption
  path into the timestep embedding (``text_time_embedding``);
* a word-level tokenizer built with ``tokenizers`` (wrapped as ``PreTrainedTokenizerFast``);
* a linear-beta ``DDPMScheduler`` (1000 steps), epsilon or v prediction (``prediction_type``; the model layer turns
  either into epsilon).

Training lives in ``difflens.train.shapes``; the adapter that loads a saved model is ``difflens.models.shapes``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .catalog import MODEL_CARD

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
PREDICTION_TARGETS = ("epsilon", "v_prediction")

@dataclass
class ShapesArch:
    """Architecture of the shapes model."""

    image_size: int = 32
    space_to_depth: int = 2
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_heads: int = 4
    text_time_embedding: bool = False
    embedding_std: float = 0.02
    text_width: int = 64
    text_layers: int = 2
    max_tokens: int = 16
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TARGETS:
            raise ValueError(f"shapes model: prediction_type must be one of {list(PREDICTION_TARGETS)}, got "
                             f"{self.prediction_type!r}")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"shapes model: {n} block widths but {len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types")
        if self.image_size % (self.space_to_depth * 2 ** (n - 1)):
            raise ValueError(f"shapes model: image_size {self.image_size} is not divisible by "
                             f"space_to_depth * 2**(blocks-1) = {self.space_to_depth * 2 ** (n - 1)}")


def block_types(cross_attention: list[bool]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """diffusers (down, up) block types from one flag per resolution level (highest resolution first)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention))
    return down, up


def build_tokenizer(words: list[str], max_tokens: int):
    """A word-level tokenizer: ``[BOS] w1 w2 ... [EOS]`` padded with ``[PAD]`` to ``max_tokens``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=max_tokens)


def build_model(words: list[str], arch: ShapesArch, seed: int):
    """Fresh (tokenizer, text_encoder, unet, scheduler) with seeded initial weights."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words, arch.max_tokens)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=arch.text_width, intermediate_size=4 * arch.text_width,
        num_hidden_layers=arch.text_layers, num_attention_heads=4, max_position_embeddings=arch.max_tokens,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    # CLIP initialises its word and position tables with std 0.02 (the default here). Trained from scratch with AdamW
    # at 1e-3, such tables let the caption-specific part of the text states shrink to ~4% of their spread; std 1
    # (torch's own default) keeps it (measured on 2 CPU cores at batch 64; the caption still did not bind by step 1250).
    for table in (text_encoder.embeddings.token_embedding, text_encoder.embeddings.position_embedding):
        torch.nn.init.normal_(table.weight, std=arch.embedding_std)
    channels = 3 * arch.space_to_depth ** 2
    unet = UNet2DConditionModel(
        sample_size=arch.image_size // arch.space_to_depth, in_channels=channels, out_channels=channels,
        block_out_channels=arch.block_out_channels, down_block_types=arch.down_block_types,
        up_block_types=arch.up_block_types, layers_per_block=arch.layers_per_block,
        cross_attention_dim=arch.text_width, attention_head_dim=arch.attention_heads,
        addition_embed_type="text" if arch.text_time_embedding else None,
        addition_embed_type_num_heads=arch.attention_heads, norm_num_groups=min(8, min(arch.block_out_channels)))
    scheduler = DDPMScheduler(num_train_timesteps=arch.num_train_timesteps, beta_schedule="linear",
                              beta_start=1e-4, beta_end=0.02, prediction_type=arch.prediction_type)
    return tokenizer, text_encoder, unet, scheduler


def images_to_latents(pixels: torch.Tensor, space_to_depth: int) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> model space (B, 3 s^2, H/s, W/s)."""
    return F.pixel_unshuffle(pixels, space_to_depth)


def latents_to_images(latents: torch.Tensor, space_to_depth: int) -> torch.Tensor:
    return F.pixel_shuffle(latents, space_to_depth)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def save_model(out_dir: Path, tokenizer, text_encoder, unet, scheduler, card: dict) -> None:
    """Write the model as a diffusers-style folder (one subfolder per component + the difflens model card)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    text_encoder.save_pretrained(tmp / "text_encoder")
    unet.save_pretrained(tmp / "unet")
    scheduler.save_pretrained(tmp / "scheduler")
    (tmp / MODEL_CARD).write_text(json.dumps(card, indent=1) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
