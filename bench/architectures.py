"""The networks the benchmarks build from public config values, with random weights and no download.

SD 1.5 (runwayml/stable-diffusion-v1-5: UNet 860M, VAE 84M, CLIP text encoder 123M parameters), the SD 2.1-base
UNet (865M) and DiT-XL/2 (facebook/DiT-XL-2-512: 675M, 28 blocks, hidden 1152, patch 2) with the SD VAE, and the
denoisers of the newer families (``family_model``: SDXL's UNet 2.6B, PixArt-Sigma's transformer 0.6B, SD3.5-medium's
MMDiT 2.24B, FLUX.1's transformer 11.9B, with a 4- or 16-channel VAE), each at one of two scales:

* ``paper``: the published config values;
* ``smoke``: the same block types, resolution levels (the VAE and UNet still downsample 8x and 8x) and layer names
  (``mid_block``, ``up_blocks.0-2``, ``transformer_blocks.0-27``) at widths of 16-64, for seconds-long CPU runs in
  the tests. Smoke numbers check that a benchmark runs, not how fast anything is.

Every builder seeds torch first, so two calls give the same weights.
"""
from __future__ import annotations

import torch

from harness import ROOT  # also puts the library (scripts/) on sys.path

TOKENIZER = ROOT / "tests" / "fixtures" / "tiny_clip_tokenizer"  # any CLIP tokenizer: only "" is encoded
SCALES = ("paper", "smoke")
SD_LAYERS = {"bottleneck": "mid_block", "up_ft0": "up_blocks.0", "up_ft1": "up_blocks.1", "up_ft2": "up_blocks.2"}
DIT_LAYERS = {f"block{i}": f"transformer_blocks.{i}" for i in (6, 13, 20, 27)}

SD15_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD21_BASE_UNET = dict(SD15_UNET, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                      use_linear_projection=True)
SD_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               patch_size=2, num_embeds_ada_norm=1000)

#: what the smoke scale changes (block types, resolution levels and layer names stay as published)
SMOKE = {
    "unet": dict(layers_per_block=1, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32,
                 attention_head_dim=4, norm_num_groups=8),
    "text": dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
    "vae": dict(layers_per_block=1, block_out_channels=(16, 16, 16, 16), norm_num_groups=8),
    "dit": dict(num_attention_heads=2, attention_head_dim=8),
}


def scaled(values: dict, part: str, scale: str) -> dict:
    """``values`` at ``scale``: as published (paper) or with the SMOKE[part] overrides."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {list(SCALES)}")
    return dict(values, **SMOKE[part]) if scale == "smoke" else dict(values)


def sd_unet(size: int, scale: str, values: dict = SD15_UNET):
    """A UNet2DConditionModel for ``size`` px images (latents size / 8), SD 1.5's by default."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=size // 8, **scaled(values, "unet", scale)).eval()


def sd_vae(scale: str):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**scaled(SD_VAE, "vae", scale)).eval()


def sd_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_sd15(size: int, scale: str = "paper") -> dict:
    """SD 1.5's UNet, VAE, text encoder, tokenizer, scheduler and the 4 benchmarked layers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = sd_unet(size, scale)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**scaled(SD_TEXT, "text", scale))).eval()
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=SD_TEXT["max_position_embeddings"])
    return {"denoiser": unet, "vae": sd_vae(scale), "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": sd_scheduler(), "layers": SD_LAYERS}


def build_dit(size: int, scale: str = "paper") -> dict:
    """DiT-XL/2's transformer (class-conditional, 1000 classes) + the SD VAE and the 4 benchmarked blocks."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(sample_size=size // 8, **scaled(DIT_XL2, "dit", scale)).eval()
    return {"denoiser": dit, "vae": sd_vae(scale), "text_encoder": None, "tokenizer": None,
            "scheduler": DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"), "layers": DIT_LAYERS}


# ---- the newer families (their public config values; no text encoders: the empty prompt's condition is set) -------
SDXL_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
PIXART_SIGMA = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                    cross_attention_dim=1152, norm_type="ada_norm_single", patch_size=2, caption_channels=4096,
                    use_additional_conditions=False, interpolation_scale=2)
SD35_MEDIUM = dict(patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                   pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX1 = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
             axes_dims_rope=(16, 56, 56))
VAE16 = dict(SD_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
#: the four blocks each family's benchmark reads (configs/families.yaml's)
FAMILY_LAYERS = {
    "sdxl": ["mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"],
    "pixart": [f"transformer_blocks.{i}" for i in (6, 13, 20, 27)],
    "sd35m": [f"transformer_blocks.{i}" for i in (5, 11, 17, 23)],
    "flux": ["transformer_blocks.9", "transformer_blocks.18", "single_transformer_blocks.18",
             "single_transformer_blocks.37"],
}
FAMILY_SMOKE = {"sdxl": dict(block_out_channels=(32, 32, 64), attention_head_dim=4, transformer_layers_per_block=1,
                             addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 32,
                             cross_attention_dim=32, norm_num_groups=8, layers_per_block=1),
                "pixart": dict(num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                               caption_channels=32),
                "sd35m": dict(attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                              caption_projection_dim=16, pooled_projection_dim=32, dual_attention_layers=(0,)),
                "flux": dict(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                             pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))}


def family_model(arch: str, size: int, scale: str, device: torch.device, dtype: torch.dtype):
    """A difflens adapter of ``arch`` (``FAMILY_LAYERS``) around its denoiser and VAE, built from the public config
    values on ``device`` in ``dtype`` (random weights), the empty prompt's condition set to zeros."""
    from diffusers import (AutoencoderKL, DDPMScheduler, FluxTransformer2DModel, PixArtTransformer2DModel,
                           SD3Transformer2DModel, UNet2DConditionModel)

    from difflens.models.flow import flow_schedule

    def values(cfg):
        return dict(cfg, **FAMILY_SMOKE[arch]) if scale == "smoke" else dict(cfg)

    common = dict(device=device, dtype=dtype, resolution=size, source=f"{arch}-architecture-random-weights",
                  components=("vae", "denoiser"))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vae = AutoencoderKL(**scaled(VAE16 if arch in ("sd35m", "flux") else SD_VAE, "vae", scale))
            if arch == "sdxl":
                from difflens.models.sdxl import StableDiffusionXLModel

                unet = UNet2DConditionModel(sample_size=size // 8, **values(SDXL_UNET))
                model = StableDiffusionXLModel(unet=unet, vae=vae, text_encoder=None, tokenizer=None,
                                               text_encoder_2=None, tokenizer_2=None, zeros_for_empty=True,
                                               unet_config=unet.config, scheduler=sd_scheduler(), **common)
            elif arch == "pixart":
                from difflens.models.pixart import PixArtModel

                net = PixArtTransformer2DModel(sample_size=size // 8, **values(PIXART_SIGMA))
                model = PixArtModel(transformer=net, vae=vae, text_encoder=None, tokenizer=None,
                                    transformer_config=net.config, max_sequence_length=300,
                                    scheduler=DDPMScheduler(beta_schedule="linear"), **common)
            elif arch == "sd35m":
                from difflens.models.sd3 import StableDiffusion3Model

                net = SD3Transformer2DModel(sample_size=size // 8, **values(SD35_MEDIUM))
                model = StableDiffusion3Model(transformer=net, vae=vae, encoders=[(None, None)] * 3,
                                              transformer_config=net.config, max_sequence_length=256,
                                              scheduler=flow_schedule(), **common)
            elif arch == "flux":
                from difflens.models.flux import FluxModel

                net = FluxTransformer2DModel(**values(FLUX1))
                model = FluxModel(transformer=net, vae=vae, encoders=[(None, None)] * 2, transformer_config=net.config,
                                  max_sequence_length=256, guidance=3.5, scheduler=flow_schedule(), **common)
            else:
                raise ValueError(f"arch {arch!r} is not one of {list(FAMILY_LAYERS)}")
    finally:
        torch.set_default_dtype(previous)
    layout = model.layout
    model.set_condition("", torch.zeros(layout.seq_len + layout.pooled_rows, layout.width + layout.mask))
    return model


BUILDERS = {"sd15": build_sd15, "dit": build_dit}


def difflens_model(arch: str, parts: dict, device: torch.device, dtype: torch.dtype, size: int):
    """The project's adapter around ``parts``' modules (moved to ``device`` and cast to ``dtype`` in place)."""
    if arch == "sd15":
        from difflens.models.sd import StableDiffusionModel

        return StableDiffusionModel(unet=parts["denoiser"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                                    tokenizer=parts["tokenizer"], scheduler=parts["scheduler"], device=device,
                                    dtype=dtype, resolution=size, source="sd15-architecture-random-weights")
    if arch == "dit":
        from difflens.models.dit import DiTModel

        return DiTModel(transformer=parts["denoiser"], vae=parts["vae"], transformer_config=parts["denoiser"].config,
                        scheduler=parts["scheduler"], device=device, dtype=dtype, resolution=size,
                        source="dit-xl-2-architecture-random-weights")
    raise ValueError(f"arch {arch!r} is not one of {list(BUILDERS)}")


def sd21_denoiser_model(size: int, scale: str, dtype: torch.dtype, device: torch.device, unet=None):
    """A difflens SD adapter around an SD 2.1-base UNet alone (no VAE, no text encoder: conditions are set with
    ``set_condition``). ``unet``: reuse that module (cast in place) rather than building one."""
    from difflens.models.sd import StableDiffusionModel

    unet = unet if unet is not None else sd_unet(size, scale, SD21_BASE_UNET)
    return StableDiffusionModel(unet=unet, vae=None, text_encoder=None, tokenizer=None, scheduler=sd_scheduler(),
                                device=device, dtype=dtype, resolution=size, source=f"sd21-base ({scale}, random)",
                                components=("denoiser",))


def text_width(unet) -> int:
    """Width of the text states a UNet cross-attends to."""
    return int(unet.config.cross_attention_dim)
