"""Builders of tiny, randomly initialised diffusers pipelines saved like hub models (no download needed).

Each builder writes a folder that the real loading code path (``difflens.models.load_model``) reads.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
TINY_CLIP_TOKENIZER = FIXTURES / "tiny_clip_tokenizer"  # character-level vocab.json + merges.txt (version line only)
MAX_TOKENS = 64  # a shapes-world caption (about 50 characters) fits the character-level vocabulary


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TINY_CLIP_TOKENIZER, model_max_length=MAX_TOKENS)


def tiny_vae(seed: int = 0):
    """AutoencoderKL with widths 32/64 (scale factor 2), 4 latent channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=4,
                         norm_num_groups=32, sample_size=16, scaling_factor=0.5)


def build_tiny_sd(out_dir: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A StableDiffusionPipeline (UNet 32/64, 2-layer CLIP text encoder) for 16 px images, saved to ``out_dir``.

    Its scheduler is a PNDMScheduler with SD's scaled-linear betas, as in the hub's SD folders.
    """
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=tiny_vae(seed), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_dit(out_dir: Path, classes: list[str], seed: int = 0) -> Path:
    """A DiTPipeline (2 transformer blocks, patch 2, ``len(classes)`` classes) for 16 px images.

    Class names go to the folder's difflens model card: ``save_pretrained`` does not keep a DiT's id2label.
    """
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from difflens.models.catalog import MODEL_CARD

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=len(classes))
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(seed), scheduler=DDIMScheduler(beta_schedule="linear"))
    pipe.save_pretrained(out_dir)
    (Path(out_dir) / MODEL_CARD).write_text(json.dumps({"kind": "dit", "classes": classes}) + "\n")
    return Path(out_dir)


def build_tiny_shapes(out_dir: Path, seed: int = 0) -> Path:
    """An untrained shapes-world model (widths 16/32/32, 32-wide text encoder) saved as the training rule does."""
    from difflens.models.shapes_arch import ShapesArch, build_model, save_model

    words = ["a", "red", "blue", "green", "circle", "square", "triangle", "to", "the", "left", "of", "right"]
    arch = ShapesArch(block_out_channels=(16, 32, 32), text_width=32)
    tokenizer, text_encoder, unet, scheduler = build_model(words, arch, seed)
    card = {"kind": "shapes", "classes": ["circle", "square", "triangle"], "train_config": {"arch": asdict(arch)}}
    save_model(Path(out_dir), tokenizer, text_encoder, unet, scheduler, card)
    return Path(out_dir)


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """A random-weight CLIP (image and text towers, 32 px images, 8 px patches) and its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=8)
    CLIPModel(config).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir


def build_tiny_dinov2(out_dir: Path, seed: int = 0) -> Path:
    """A random-weight DINOv2 (32 px images, 8 px patches) and its image processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2)).save_pretrained(out_dir)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir
