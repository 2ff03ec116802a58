"""Training of the shapes-world model (architecture: ``difflens.models.shapes_arch``).

Captions are dropped ``p_uncond`` of the time so the unconditional denoiser (empty prompt) exists; training
timesteps are drawn uniformly, or (``noise_levels`` logistic) as the timestep nearest to a logistic log-SNR draw:
the distribution the information estimators integrate over, as in Kong et al.'s information-theoretic diffusion
training.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models.base import log_snr_of, nearest_timestep
from ..models.shapes_arch import ShapesArch, build_model, images_to_latents, save_model, tokenize

log = logging.getLogger(__name__)

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


def training_words(captions: list[str]) -> list[str]:
    """The tokenizer vocabulary of a model trained on ``captions``: every shapes-world word plus theirs, lower case."""
    from ..data.shapes import vocabulary

    return sorted(set(vocabulary()) | {w for c in captions for w in c.lower().split()})


def load_pixels(dataset, split: str, n: int | None = None) -> tuple[torch.Tensor, list[str], list[str]]:
    """The images of one split (all, or its first ``n``) as a [-1, 1] float tensor, with captions and sample ids."""
    rows = dataset.split(split)[:n]
    arrays = [np.asarray(dataset.load_image(sid), dtype=np.float32) for sid in rows["sample_id"]]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, list(rows["caption"]), list(rows["sample_id"])


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up ``lr (step + 1) / warmup_steps``, then a
    half cosine from ``lr`` to 0 over the remaining steps.

    Not diffusers' ``get_cosine_schedule_with_warmup``: its warm-up is ``lr step / warmup_steps``, one step
    behind this one (lr 0 at step 0, ``lr`` reached at step ``warmup_steps`` instead of ``warmup_steps - 1``);
    from step ``warmup_steps`` on the two are equal. The shipped checkpoint was trained with this schedule, and
    retraining must reproduce it byte for byte (tests/test_shapes_model.py compares the two)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def draw_timesteps(scheduler, n: int, generator: torch.Generator, noise_levels: dict | None = None) -> torch.Tensor:
    """``n`` training timesteps: uniform, or nearest to log-SNR draws from logistic(loc, scale)."""
    if (noise_levels or {}).get("distribution", "uniform") == "uniform":
        return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)

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
          threads: int | None = None, device: str | None = None) -> dict:
    """Train the shapes model on a captioned data set in the common form; resumable from ``work_dir``.

    Returns the training summary (also stored in the model card). Runs on ``device``; by default one GPU when
    present, else the CPU.
    """
    from ..data.common import Dataset
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
