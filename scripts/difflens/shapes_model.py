"""The small text-conditioned diffusion model of the shapes world: build, train, save.

Architecture (all diffusers / transformers classes, so the model loads like a hub model):

* images are mapped to "latents" by a lossless 2x2 space-to-depth (pixel unshuffle): a 32 px RGB image becomes
  12 x 16 x 16. This plays the VAE's role and makes training ~4x cheaper than on raw pixels;
* ``UNet2DConditionModel`` with cross-attention on a small ``CLIPTextModel`` (by default in the two lower resolution
  levels; ``block_types`` maps one flag per level to the diffusers block types), optionally also a global caption
  path into the timestep embedding (``text_time_embedding``);
* a word-level tokenizer built with ``tokenizers`` (wrapped as ``PreTrainedTokenizerFast``);
* a linear-beta ``DDPMScheduler`` (1000 steps), epsilon or v prediction (``prediction_type``; the model layer turns
  either into epsilon), captions dropped ``p_uncond`` of the time so the unconditional denoiser (empty prompt) exists;
* training timesteps drawn uniformly, or (``noise_levels`` logistic) as the timestep nearest to a logistic log-SNR
  draw: the distribution the information estimators integrate over, as in Kong et al.'s information-theoretic
  diffusion training.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger(__name__)

MODEL_CARD = "difflens_model.json"
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


@dataclass
class TrainConfig:
    """Optimisation settings of the shapes model."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    p_uncond: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    noise_levels: dict = field(default_factory=lambda: {"distribution": "uniform"})
    arch: ShapesArch = field(default_factory=ShapesArch)

    def __post_init__(self):
        kind = self.noise_levels.get("distribution")
        if kind not in ("uniform", "logistic"):
            raise ValueError(f"shapes model: noise_levels.distribution must be uniform or logistic, got {kind!r}")
        if kind == "logistic" and not self.noise_levels.get("scale", 0) > 0:
            raise ValueError(f"shapes model: noise_levels.scale must be > 0, got {self.noise_levels.get('scale')!r}")


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


def training_words(captions: list[str]) -> list[str]:
    """The tokenizer vocabulary of a model trained on ``captions``: every shapes-world word plus theirs, lower case."""
    from .data.shapes import vocabulary

    return sorted(set(vocabulary()) | {w for c in captions for w in c.lower().split()})


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


def load_pixels(dataset, split: str, n: int | None = None) -> tuple[torch.Tensor, list[str], list[str]]:
    """The images of one split (all, or its first ``n``) as a [-1, 1] float tensor, with captions and sample ids."""
    rows = dataset.split(split)[:n]
    arrays = [np.asarray(dataset.load_image(sid), dtype=np.float32) for sid in rows["sample_id"]]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, list(rows["caption"]), list(rows["sample_id"])


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def draw_timesteps(scheduler, n: int, generator: torch.Generator, noise_levels: dict | None = None) -> torch.Tensor:
    """``n`` training timesteps: uniform, or nearest to log-SNR draws from logistic(loc, scale)."""
    if (noise_levels or {}).get("distribution", "uniform") == "uniform":
        return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    from .models.base import log_snr_of, nearest_timestep

    u = torch.rand(n, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    a = noise_levels.get("loc", 0.0) + noise_levels["scale"] * (torch.log(u) - torch.log1p(-u))
    return nearest_timestep(a, log_snr_of(scheduler.alphas_cumprod))


def diffusion_loss(unet, text_encoder, scheduler, latents, ids, generator, noise_levels: dict | None = None):
    """MSE of the scheduler's prediction target (epsilon, or v) at timesteps drawn by ``draw_timesteps``."""
    b = latents.shape[0]
    t = draw_timesteps(scheduler, b, generator, noise_levels).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
    cond = text_encoder(ids)[0]
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, target)


def train(dataset_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, work_dir: str | Path | None = None,
          threads: int | None = None) -> dict:
    """Train the shapes model on a captioned data set in the common form; resumable from ``work_dir``.

    Returns the training summary (also stored in the model card). Runs on the CPU or, when present, one GPU.
    """
    from .data.common import Dataset
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds = Dataset.load(dataset_dir)
    pixels, captions, _ = load_pixels(ds, "train")
    if pixels.shape[-1] != cfg.arch.image_size:
        raise ValueError(f"{dataset_dir}: images are {pixels.shape[-1]} px but the model's image_size is "
                         f"{cfg.arch.image_size}")
    tokenizer, text_encoder, unet, scheduler = build_model(training_words(captions), cfg.arch, cfg.seed)
    all_ids = tokenize(tokenizer, [c.lower() for c in captions])
    empty_ids = tokenize(tokenizer, [""])[0]
    latents = images_to_latents(pixels, cfg.arch.space_to_depth)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, history = 0, []
    ckpt = Path(work_dir) / "train_state.pt" if work_dir else None
    if ckpt and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        # states saved before prediction_type existed trained an epsilon model
        if {"prediction_type": "epsilon", **state.get("arch", asdict(cfg.arch))} != asdict(cfg.arch):
            raise ValueError(f"{ckpt}: this training state is of another architecture ({state['arch']}); resume "
                             f"with the same train settings, or delete {work_dir} to start afresh")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, history = state["step"], state["history"]
        log.info("resumed from %s at step %d", ckpt, start)
    unet.to(device).train()
    text_encoder.to(device).train()
    t0 = time.time()
    bar = tqdm(range(start, cfg.steps), desc="train shapes model", initial=start, total=cfg.steps, mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        ids = all_ids[idx].clone()
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.p_uncond
        ids[drop] = empty_ids
        loss = diffusion_loss(unet, text_encoder, scheduler, latents[idx].to(device), ids.to(device), gen,
                              cfg.noise_levels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(history[-50:]):.4f}")
        if ckpt and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                        "opt": opt.state_dict(), "gen": gen.get_state(), "step": step + 1, "history": history,
                        "arch": asdict(cfg.arch)},
                       ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
            log.info("step %d loss(50) %.4f", step + 1, np.mean(history[-50:]))
    summary = {"steps": cfg.steps, "final_loss_50": float(np.mean(history[-50:])) if history else None,
               "train_seconds_this_run": round(time.time() - t0, 1), "device": str(device),
               "n_train_images": int(len(latents)), "loss_every_50": [round(float(np.mean(history[i:i + 50])), 5)
                                                                      for i in range(0, len(history), 50)]}
    card = {"kind": "shapes", "dataset": ds.name, "classes": ds.classes, "train_config": asdict(cfg),
            "training": summary}
    save_model(Path(out_dir), tokenizer, text_encoder.cpu().eval(), unet.cpu().eval(), scheduler, card)
    return summary
