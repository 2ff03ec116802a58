"""Full-size stand-ins of the paper models with seeded random weights, saved like their hub repositories.

SD 1.5, SD 2.1-base and DiT-XL/2 (512 px), and DINOv2-base (the external baseline of ``classify.baselines``), are
built from their published config values and written with ``save_pretrained`` into ``<mirror>/<org>/<name>/``, the
layout ``download_model`` copies from a hub mirror (``hub_mirror``), so the model loaders read them unchanged. Every
tensor has the published shape, so a run's time, memory and disk are those of the real models; its numbers mean
nothing (the weights are random). Nothing is downloaded: the tokenizers are the character-level one of the tests
(``tests/fixtures/tiny_clip_tokenizer``) padded to CLIP's 77 tokens, inside the published 49,408-row embedding table.

    python tests/paper_models.py <mirror_dir>          # builds the models that are missing there, skips the others

configs/paper_smoke.yaml and ``make paper-smoke`` use them. (bench/extract.py builds SD 1.5 and DiT-XL/2 from the
same values for its own timing, in memory.)
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch

from tiny_pipelines import TINY_CLIP_TOKENIZER

ORG = "difflens-random"  # not the publishers' ids: these folders must never pass for the real weights
CLIP_TOKENS = 77
CLIP_VOCAB = 49408
SD_WIDTHS = (320, 640, 1280, 1280)
VAE_WIDTHS = (128, 256, 512, 512)


# ---- components -----------------------------------------------------------------------------------------------
def sd_vae(sample_size: int = 512):
    """The AutoencoderKL of SD 1.x / 2.x (and of DiT-XL/2, sd-vae-ft-ema): 83.7M parameters, latents 4 x 64 x 64."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=VAE_WIDTHS, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=sample_size,
                         scaling_factor=0.18215)


def sd_scheduler():
    """The scheduler config of the SD 1.5 and 2.1-base repositories (PNDM, scaled-linear betas, epsilon)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon")


def sd_unet(cross_attention_dim: int, attention_head_dim, use_linear_projection: bool):
    """UNet2DConditionModel of SD 1.x / 2.x: widths 320/640/1280/1280, 2 layers per block, latents 64 x 64."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=SD_WIDTHS,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim, use_linear_projection=use_linear_projection, norm_num_groups=32)


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TINY_CLIP_TOKENIZER, model_max_length=CLIP_TOKENS)


def clip_text_encoder(tokenizer, *, width: int, layers: int, heads: int, act: str, projection_dim: int):
    """A CLIPTextModel of the published shape (77 positions, 49,408 token rows); special tokens are the tokenizer's."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=CLIP_TOKENS, hidden_act=act, projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def sd15_unet():
    """stable-diffusion-v1-5's UNet: 8 heads per block, cross-attention 768."""
    return sd_unet(768, 8, use_linear_projection=False)


def sd21_base_unet():
    """stable-diffusion-2-1-base's UNet: head dims 5/10/20/20, linear projections, cross-attention 1024."""
    return sd_unet(1024, (5, 10, 20, 20), use_linear_projection=True)


def sd15_text_encoder(tokenizer):
    """SD 1.5's text encoder: CLIP ViT-L/14's text tower (12 layers, 768 wide, quick GELU)."""
    return clip_text_encoder(tokenizer, width=768, layers=12, heads=12, act="quick_gelu", projection_dim=768)


def sd21_text_encoder(tokenizer):
    """SD 2.x's text encoder: OpenCLIP ViT-H/14's text tower as a CLIPTextModel, up to its penultimate layer (23 of
    24 layers, 1024 wide, GELU)."""
    return clip_text_encoder(tokenizer, width=1024, layers=23, heads=16, act="gelu", projection_dim=512)


def dit_xl_2_transformer():
    """DiTTransformer2DModel of DiT-XL/2 at 512 px: 28 blocks of width 1152 (16 heads of 72), patch 2 on 64 x 64
    latents, 1000 classes, 8 output channels (noise and learned variance)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                 num_layers=28, sample_size=64, patch_size=2, num_embeds_ada_norm=1000)


def dinov2_base():
    """Dinov2Model of dinov2-base: ViT-B/14 (12 layers, 768 wide, layer scale) with a 518 px position grid."""
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                    image_size=518, patch_size=14, layerscale_value=1.0))


# ---- pipelines ------------------------------------------------------------------------------------------------
def save_sd(out_dir: Path, unet, text_encoder, tokenizer) -> None:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(vae=sd_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out_dir)


def build_sd15(out_dir: Path) -> None:
    tokenizer = clip_tokenizer()
    save_sd(out_dir, sd15_unet(), sd15_text_encoder(tokenizer), tokenizer)


def build_sd21_base(out_dir: Path) -> None:
    tokenizer = clip_tokenizer()
    save_sd(out_dir, sd21_base_unet(), sd21_text_encoder(tokenizer), tokenizer)


def build_dit_xl_2_512(out_dir: Path) -> None:
    """DiT-XL-2-512: its transformer, a DDIM scheduler with DDPM's linear betas and the SD VAE. The repository's
    model_index.json carries ImageNet's id2label; placeholder names stand in for it here."""
    from diffusers import DDIMScheduler, DiTPipeline

    transformer = dit_xl_2_transformer()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False)
    DiTPipeline(transformer=transformer, vae=sd_vae(), scheduler=scheduler).save_pretrained(out_dir)
    index = out_dir / "model_index.json"
    model_index = json.loads(index.read_text())
    model_index["id2label"] = {str(i): f"imagenet class {i}" for i in range(1000)}
    index.write_text(json.dumps(model_index, indent=2) + "\n")


def build_dinov2_base(out_dir: Path) -> None:
    """dinov2-base and its image processor (resize 256, centre crop 224, ImageNet mean and std)."""
    from transformers import BitImageProcessor

    dinov2_base().save_pretrained(out_dir)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out_dir)


#: hub id in the mirror -> (builder, seed)
MODELS = {
    f"{ORG}/stable-diffusion-v1-5": (build_sd15, 15),
    f"{ORG}/stable-diffusion-2-1-base": (build_sd21_base, 21),
    f"{ORG}/DiT-XL-2-512": (build_dit_xl_2_512, 512),
    f"{ORG}/dinov2-base": (build_dinov2_base, 2),
}


# ---- the mirror -----------------------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_record(folder: Path) -> Path:
    """``<org>/<name>.build.json`` beside the model folder (not in it: the mirror holds the hub's files only); it is
    written once the finished folder has been renamed into place."""
    return folder.with_name(folder.name + ".build.json")


def is_built(folder: Path) -> bool:
    return folder.is_dir() and build_record(folder).is_file()


def build_model(mirror: Path, hub_id: str) -> dict:
    """Build one model into ``<mirror>/<hub_id>`` (in a side folder renamed when complete); its build record."""
    if hub_id not in MODELS:
        raise KeyError(f"unknown paper model {hub_id!r}; known: {sorted(MODELS)}")
    builder, seed = MODELS[hub_id]
    dest = Path(mirror) / hub_id
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    build_record(dest).unlink(missing_ok=True)
    start = time.time()
    torch.manual_seed(seed)
    with torch.no_grad():
        builder(work)
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    record = {"hub_id": hub_id, "seed": seed, "seconds": round(time.time() - start, 1),
              "bytes": folder_bytes(dest), "versions": {"torch": torch.__version__}}
    build_record(dest).write_text(json.dumps(record, indent=1) + "\n")
    return record


def build_mirror(mirror: Path, hub_ids=None, log=print) -> list[dict]:
    """Every paper model missing from ``mirror`` (all of ``MODELS`` by default); those already built are skipped."""
    records = []
    for hub_id in hub_ids or MODELS:
        dest = Path(mirror) / hub_id
        if is_built(dest):
            log(f"{hub_id}: already in {mirror}, skipped")
            continue
        record = build_model(Path(mirror), hub_id)
        log(f"{hub_id}: built and saved in {record['seconds']:.0f} s, {record['bytes'] / 1e9:.2f} GB")
        records.append(record)
    return records


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python {Path(__file__).name} <mirror_dir>", file=sys.stderr)
        return 2
    build_mirror(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
