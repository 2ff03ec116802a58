"""Tiny random-weight pipelines of the newer families (SDXL, PixArt-Sigma, SD3, FLUX.1), built from config dicts
and saved with the pipeline's own ``save_pretrained``, so that their folders hold what the hub's hold
(model_index.json naming the pipeline, one subfolder per component) and the adapters load them as real models.

Text encoders are 2-layer CLIPs on the character-level fixture vocabulary and a 2-layer T5 on a small Unigram
vocabulary that splits "triangle" into two sub-tokens (``▁tri`` + ``angle``), as T5's SentencePiece splits rare words.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_pipelines import MAX_TOKENS, tiny_clip_tokenizer, tiny_vae

T5_WORDS = ("a red blue green yellow circle square small large to the left right of above below on top cat dog "
            "photo an image").split()
T5_WIDTH = 32
TEXT_WIDTH = 32


def tiny_t5_tokenizer():
    """A T5 tokenizer (Unigram, Metaspace) whose vocabulary has the shapes-world words as whole pieces, except
    ``triangle`` (``▁tri`` + ``angle``), and single letters for everything else."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in T5_WORDS] + [("\u2581tri", -1.0), ("angle", -1.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=MAX_TOKENS)


def tiny_t5(vocab_size: int, seed: int = 0, width: int = T5_WIDTH):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def tiny_clip_text(projection: bool, seed: int = 0):
    """A 2-layer CLIP text tower (with its projection for ``CLIPTextModelWithProjection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tiny_clip_tokenizer()), hidden_size=TEXT_WIDTH, intermediate_size=37,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=TEXT_WIDTH)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def build_tiny_sdxl(out_dir: Path, seed: int = 0) -> Path:
    """StableDiffusionXLPipeline: UNet 32/64 with the added text-and-time conditions, CLIP-L and CLIP-G (with
    projection) of width 32 each (cross-attention width 64), Euler scheduler with SD's scaled-linear betas."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2 * TEXT_WIDTH,
                                attention_head_dim=8, norm_num_groups=32, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTH)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(seed), text_encoder=tiny_clip_text(False, seed),
                                     text_encoder_2=tiny_clip_text(True, seed + 1), tokenizer=tiny_clip_tokenizer(),
                                     tokenizer_2=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler)
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_pixart(out_dir: Path, seed: int = 0) -> Path:
    """PixArtSigmaPipeline: 2 transformer blocks (patch 2, learned variance), the tiny T5, DPM-Solver scheduler
    with DDPM's linear betas (as PixArt's)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=2, cross_attention_dim=16, norm_type="ada_norm_single",
                                           sample_size=8, patch_size=2, caption_channels=T5_WIDTH,
                                           use_additional_conditions=False)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=tiny_t5(len(tokenizer), seed), vae=tiny_vae(seed),
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler(beta_schedule="linear"))
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_sd3(out_dir: Path, seed: int = 0) -> Path:
    """StableDiffusion3Pipeline: 2 joint (MMDiT) blocks, CLIP-L and CLIP-G with projection (pooled 64), the tiny T5
    (joint attention width 64 = the two CLIPs side by side), flow-matching Euler scheduler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=2 * TEXT_WIDTH,
                                        caption_projection_dim=16, pooled_projection_dim=2 * TEXT_WIDTH,
                                        out_channels=4, pos_embed_max_size=16)
    t5 = tiny_t5(len(tokenizer), seed, width=2 * TEXT_WIDTH)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=tiny_vae(seed), text_encoder=tiny_clip_text(True, seed),
                                    tokenizer=tiny_clip_tokenizer(), text_encoder_2=tiny_clip_text(True, seed + 1),
                                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=t5, tokenizer_3=tokenizer)
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_flux(out_dir: Path, seed: int = 0, guidance: bool = True) -> Path:
    """FluxPipeline: 1 double-stream and 2 single-stream blocks over packed 2x2 latents (4 channels -> 16 per token),
    CLIP-L (pooled 32) and the tiny T5, a guidance embedding (FLUX.1-dev's) unless ``guidance`` is False
    (FLUX.1-schnell's), flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                         pooled_projection_dim=TEXT_WIDTH, guidance_embeds=guidance,
                                         axes_dims_rope=(2, 2, 4))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=tiny_vae(seed),
                        text_encoder=tiny_clip_text(False, seed), tokenizer=tiny_clip_tokenizer(),
                        text_encoder_2=tiny_t5(len(tokenizer), seed), tokenizer_2=tokenizer, transformer=transformer)
    pipe.save_pretrained(out_dir)
    return Path(out_dir)


FAMILY_BUILDERS = {"sdxl": build_tiny_sdxl, "pixart": build_tiny_pixart, "sd3": build_tiny_sd3,
                   "flux": build_tiny_flux}
