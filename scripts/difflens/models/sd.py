"""Adapter of Stable Diffusion 1.x / 2.x (``UNet2DConditionModel`` + ``AutoencoderKL`` + ``CLIPTextModel``).

Components are loaded one by one from a hub id or a local ``StableDiffusionPipeline`` folder (no safety checker, no
pipeline object), and only those a job asks for (``components``): the latents job loads the VAE alone, an
activation job the UNet (and the text encoder only for a non-empty prompt). The noise schedule is read from the
folder's scheduler config whatever its class (PNDM, DDIM, ...) into a ``DDPMScheduler``; its ``prediction_type`` is
kept, and ``denoise`` always returns epsilon: the 768 px SD 2.x models predict v, converted by
``eps = sqrt(abar) v + sqrt(1 - abar) x_t``.
"""
from __future__ import annotations

from .base import VAELatentsMixin, check_components, place
from .unet import TextUNetModel


class StableDiffusionModel(VAELatentsMixin, TextUNetModel):
    """Stable Diffusion; ``kind: sd``. Layers: down_blocks.i, mid_block (alias bottleneck), up_blocks.i (up_fti)."""

    kind = "sd"
    OPTIONS = ("dtype", "device", "local_files_only", "resolution", "classes", "components", "geometry")

    def __init__(self, *, vae, **kwargs):
        super().__init__(**kwargs)
        self.vae = place(vae, self.device, self.dtype)

    @classmethod
    def from_pretrained(cls, source, *, dtype="auto", device=None, local_files_only: bool = False,
                        resolution: int | None = None, classes: list[str] | None = None, components=None,
                        geometry: str = "crop", **unknown) -> "StableDiffusionModel":
        """Load from a hub id (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a pipeline folder.

        ``resolution`` defaults to the UNet's sample_size x the VAE's scale factor (512 for SD 1.5 and
        SD 2.1-base, 768 for SD 2.1). ``components``: a subset of ``("vae", "denoiser", "text")``; None = all.
        ``geometry``: how images become the R x R input (``base.GEOMETRIES``: crop, squash).
        """
        device, dtype = cls._load_settings(source, device, dtype, unknown)
        components = check_components(components, source)
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        src = str(source)
        load = {"local_files_only": local_files_only}
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, **load) \
            if "denoiser" in components else None
        unet_config = unet.config if unet is not None else UNet2DConditionModel.load_config(src, subfolder="unet",
                                                                                             **load)
        vae, vae_config = cls.load_vae(src, dtype, components, **load)
        text = "text" in components
        res = int(resolution) if resolution else unet_config["sample_size"] * cls.config_scale_factor(vae_config)
        return cls(unet=unet, vae=vae,
                   text_encoder=CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype, **load)
                   if text else None,
                   tokenizer=CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **load) if text else None,
                   scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler", **load),
                   device=device, dtype=dtype, resolution=res, classes=classes, source=src, components=components,
                   geometry=geometry)
