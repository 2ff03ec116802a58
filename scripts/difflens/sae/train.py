"""Training and evaluating a k-SAE on feature vectors held in memory (pooled vectors, or map positions).

``train_sae`` draws seeded batches from the train vectors, minimises the scaled reconstruction error plus, when on,
the AuxK loss, and keeps decoder rows unit-norm. AuxK (``aux_coef`` > 0): the latents that have not fired for
``SAETrainSettings.patience`` steps are "dead"; the ``aux_k`` largest pre-activations among them reconstruct the
**detached** residual x - x_hat, decoded **without** b_pre (the residual has none), and that error, over the
residual's variance, is added with weight ``aux_coef``. ``evaluate`` gives FVU, explained variance, L0, the fraction
of latents that never fire on a set and each latent's firing frequency and mean activation.

Why steps and passes rather than vectors: the SAE libraries call a latent dead after 10M tokens without firing, but
a batch is capped at the training set's size, so on Flowers-102 (1,020 train vectors, batch 1,020) 10M vectors are
9,804 of 10,000 steps and AuxK never acted. A latent that has not fired in ``dead_passes`` passes (10 by default:
each vector drawn at least once with probability 1 - e^-10) does not fire on the training set; on sets far larger
than the batch, ``dead_steps`` (1,000: 8.2M vectors at batch 8,192, near the libraries' 10M) bounds it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from .memory import encode_batch
from .model import KSAE, SAEConfig, SAEError, SparseCode

logger = logging.getLogger(__name__)


def default_lr(n_latents: int) -> float:
    """2e-4 / sqrt(n_latents / 2^14), the scaling the SAE libraries use."""
    return 2e-4 / math.sqrt(n_latents / 2 ** 14)


@dataclass
class SAETrainSettings:
    """Optimisation of a k-SAE. ``lr`` None = ``default_lr``; ``aux_k`` None = d / 2; ``aux_coef`` 0 = no AuxK (the
    paper). A latent is dead for AuxK after ``patience`` steps without firing: ``dead_steps``, or ``dead_passes``
    passes over the training vectors, whichever is fewer (module docstring). ``dead_after``, the former count in
    vectors (None: unused), is still taken from code (bench scripts comparing with libraries that count vectors):
    when given, it alone sets the patience, as before. ``warmup_steps``: the learning rate ramps linearly over the
    first steps, lr x min(1, (step + 1) / warmup_steps), as the Revelio code's ``constantwithwarmup`` (500 steps);
    0 = constant from the first step."""

    steps: int = 2000
    batch_size: int = 4096
    lr: float | None = None
    aux_coef: float = 1 / 32
    aux_k: int | None = None
    dead_steps: int = 1000
    dead_passes: float = 10.0
    seed: int = 0
    dead_after: int | None = None
    warmup_steps: int = 0

    def __post_init__(self):
        checks = {"steps": self.steps >= 1, "batch_size": self.batch_size >= 1,
                  "lr": self.lr is None or self.lr > 0, "aux_coef": self.aux_coef >= 0,
                  "aux_k": self.aux_k is None or self.aux_k >= 1, "dead_steps": self.dead_steps >= 1,
                  "dead_passes": self.dead_passes > 0, "dead_after": self.dead_after is None or self.dead_after >= 1,
                  "warmup_steps": self.warmup_steps >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SAEError("SAE training settings out of range: " + ", ".join(f"{k}={getattr(self, k)!r}"
                                                                               for k in bad))

    def patience(self, batch: int, n_vectors: int | None = None) -> int:
        """Steps without firing that make a latent dead, at ``batch`` vectors per step from ``n_vectors`` training
        vectors (None: a stream without passes)."""
        if self.dead_after is not None:
            return max(1, math.ceil(self.dead_after / batch))
        passes = math.ceil(self.dead_passes * n_vectors / batch) if n_vectors else self.dead_steps
        return max(1, min(self.dead_steps, passes))


def _aux_loss(sae: KSAE, x: torch.Tensor, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK: the dead latents' top ``aux_k`` pre-activations (``pre``, no gradient) reconstruct the detached
    residual, decoded without b_pre (the residual has none)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(aux_k, n_dead)
    masked = pre.masked_fill(~dead[None, :], -1.0)  # one (b, n) copy
    values, indices = masked.topk(k, dim=1)
    b = len(pre)
    code = SparseCode(indices.flatten(), values.clamp_min(0).flatten(), torch.arange(0, b * k + 1, k,
                                                                                        device=pre.device))
    aux = sae.decode_scaled(sae.with_grad(x, code), bias=False)
    variance = (residual - residual.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
    return (aux - residual).pow(2).sum(1).mean() / variance


class SAETrainer:
    """One optimisation step at a time (``step``) of a k-SAE whose input scale and b_pre are set: Adam, AuxK against
    the latents dead for ``patience`` steps (from ``n_vectors`` training vectors; None: a stream), unit-norm decoder
    rows, the BatchTopK threshold."""

    def __init__(self, sae: KSAE, settings: SAETrainSettings, n_vectors: int | None = None):
        self.sae, self.settings, self.n_vectors = sae, settings, n_vectors
        config = sae.config
        self.lr = settings.lr or default_lr(config.n_latents)
        self.opt = torch.optim.Adam(sae.parameters(), lr=self.lr)
        warmup = settings.warmup_steps
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup)) \
            if warmup else None
        self.aux_k = settings.aux_k or max(1, config.d // 2)
        self.patience = settings.patience(min(settings.batch_size, n_vectors or settings.batch_size), n_vectors)
        self.since_fired = torch.zeros(config.n_latents, dtype=torch.long, device=sae.b_pre.device)  # steps

    def dead(self) -> torch.Tensor:
        return self.since_fired >= self.patience

    def step(self, xb: torch.Tensor) -> dict:
        """One step on the batch ``xb`` (b, d) in input units; returns its losses (tensors, not synchronised)."""
        sae, settings = self.sae, self.settings
        target = xb / sae.input_scale
        with torch.no_grad():
            pre = sae.pre_activations(xb)
            code = sae.sparsify(pre, train=True)
        residual = target - sae.decode_scaled(sae.with_grad(xb, code))
        mse = residual.pow(2).sum(1).mean()
        fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
        fired[code.indices[code.values > 0]] = True
        self.patience = settings.patience(len(xb), self.n_vectors)
        self.since_fired.add_(1).masked_fill_(fired, 0)
        aux = _aux_loss(sae, xb, pre, residual.detach(), self.dead(), self.aux_k) if settings.aux_coef > 0 \
            else mse.new_zeros(())
        loss = mse + settings.aux_coef * aux
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        self.opt.step()
        if self.schedule is not None:
            self.schedule.step()
        sae.normalize_decoder()
        if sae.config.activation == "batchtopk":
            sae.update_threshold(code)
        variance = (target - target.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
        return {"loss": loss.detach(), "fvu": mse.detach() / variance, "aux": aux.detach()}


def initial_sae(x: torch.Tensor, config: SAEConfig, seed: int) -> tuple[KSAE, torch.Generator]:
    """The k-SAE ``train_sae`` starts from (seeded decoder draw; b_pre and input scale from a seeded sample of up to
    16,384 rows of ``x``) and the generator, which training goes on drawing its batches from. The only random source:
    no global seed, so that fits run side by side in threads stay reproducible. ``controls`` reads the same model
    as the untrained control."""
    gen = torch.Generator().manual_seed(seed)
    sae = KSAE(config, generator=gen)
    sae.init_from_sample(x[torch.randperm(len(x), generator=gen)[:min(len(x), 16384)]].float())
    return sae, gen


def train_sae(x: torch.Tensor, config: SAEConfig, settings: SAETrainSettings | None = None, *, device=None,
              progress: bool = True, log: logging.Logger | None = None) -> tuple[KSAE, list[dict]]:
    """A k-SAE trained on the rows of ``x`` (N, d) (kept on the CPU; batches move to ``device``), batches drawn
    with replacement by a generator seeded with ``settings.seed``. Returns the model (in eval mode) and the loss
    curve (about 100 entries)."""
    settings = settings or SAETrainSettings()
    log = log or logger
    if x.dim() != 2 or len(x) == 0:
        raise SAEError(f"SAE: training vectors must be a non-empty (N, d) array, got shape {tuple(x.shape)}")
    if x.shape[1] != config.d:
        raise SAEError(f"SAE: training vectors have d = {x.shape[1]} but the SAE's d is {config.d}")
    if not torch.isfinite(x).all():
        raise SAEError(f"SAE: training vectors hold {int((~torch.isfinite(x)).sum())} non-finite values")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sae, gen = initial_sae(x, config, settings.seed)
    trainer = SAETrainer(sae.to(device).train(), settings, n_vectors=len(x))
    curve, every = [], max(1, settings.steps // 100)
    start = time.time()
    bar = tqdm(range(settings.steps), desc="k-SAE", disable=not progress, mininterval=2)
    for step in bar:
        rows = torch.randint(0, len(x), (min(settings.batch_size, len(x)),), generator=gen)
        out = trainer.step(x[rows].to(device, non_blocking=True).float())
        if step % every == 0 or step == settings.steps - 1:
            curve.append({"step": step + 1, **{k: float(v) for k, v in out.items()},
                          "dead_fraction": float(trainer.dead().float().mean())})
            bar.set_postfix(fvu=f"{curve[-1]['fvu']:.3f}", refresh=False)
    log.info("k-SAE: %d steps of %d vectors in %.1f s (lr %.2e, AuxK %s)", settings.steps, settings.batch_size,
             time.time() - start, trainer.lr,
             f"coef {settings.aux_coef:g}, k_aux {trainer.aux_k}, dead after {trainer.patience} steps without firing"
             if settings.aux_coef else "off")
    return sae.eval(), curve


@torch.no_grad()
def encode_all(sae: KSAE, x: torch.Tensor, batch_size: int | None = None):
    """Yield (rows slice, SparseCode) over the rows of x, in order, ``batch_size`` rows at a time (None: as many as
    ``memory.encode_batch`` allows)."""
    device = sae.b_pre.device
    batch_size = batch_size or encode_batch(sae.config.n_latents)
    for a in range(0, len(x), batch_size):
        yield slice(a, min(a + batch_size, len(x))), sae.encode(x[a:a + batch_size].to(device).float())


@torch.no_grad()
def evaluate(sae: KSAE, x: torch.Tensor, batch_size: int | None = None) -> dict:
    """FVU (squared error over the variance around the set's mean, in input units), explained variance, mean L0,
    the fraction of latents that never fire on ``x``, and per latent its firing frequency and mean activation (over
    all vectors)."""
    n = sae.config.n_latents
    device = sae.b_pre.device
    err, total, l0 = 0.0, 0.0, 0.0
    count = torch.zeros(n, dtype=torch.float64, device=device)
    sums = torch.zeros(n, dtype=torch.float64, device=device)
    mean = x.float().mean(0).to(device)
    for rows, code in encode_all(sae, x, batch_size):
        xb = x[rows].to(device).float()
        err += float((xb - sae.decode(code)).pow(2).sum())
        total += float((xb - mean).pow(2).sum())
        l0 += float(code.l0().sum())
        active = code.values > 0
        count.index_add_(0, code.indices[active], torch.ones_like(code.values[active], dtype=torch.float64))
        sums.index_add_(0, code.indices, code.values.double())
    fvu = err / max(total, 1e-12)
    return {"fvu": fvu, "explained_variance": 1 - fvu, "l0": l0 / len(x),
            "dead_fraction": float((count == 0).double().mean()), "frequency": (count / len(x)).cpu().numpy(),
            "mean_activation": (sums / len(x)).cpu().numpy()}


def settings_dict(config: SAEConfig, settings: SAETrainSettings) -> dict:
    return {**asdict(config), **{f"train_{k}": v for k, v in asdict(settings).items()}}

