"""The k-sparse autoencoder (Revelio's k-SAE, with what the SAE libraries learned since).

    z = sparsify(ReLU(W_enc (x - b_pre) + b_enc)),   x_hat = W_dec^T z + b_pre,   loss = ||x - x_hat||^2

``sparsify`` keeps, per vector, the k largest pre-activations (``activation="topk"``), or over a training batch of b
vectors the k x b largest (``"batchtopk"``): then a running estimate of the smallest kept value becomes a threshold,
and at inference a latent fires where its pre-activation exceeds it, so a vector's code never depends on its batch.
Kept values pass a ReLU (the Revelio code let negative codes through).

Decoder rows are unit-norm (renormalised after every step, with the gradient component parallel to each row removed
before it: ``remove_parallel_grad``); the encoder starts tied to them, with a zero bias. ``b_pre`` starts at the
geometric median of a sample. Inputs are scaled by a constant (stored with the model) so that their mean squared
distance to b_pre is 1.

Speed: the code is held sparse, as (flat latent indices, values, offsets per vector), and decoded by gathering the
active decoder rows (``embedding_bag`` with per-sample weights), never as a dense n-wide vector; the encoder runs
under bf16 autocast on a GPU. No Python loop over latents or vectors.

``save`` / ``load``: a folder with ``sae_config.json`` and ``sae.safetensors``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("topk", "batchtopk")
CONFIG_FILE, WEIGHTS_FILE = "sae_config.json", "sae.safetensors"


class SAEError(ValueError):
    """Bad SAE settings or input; the message names the value."""


@dataclass
class SAEConfig:
    """Shape of a k-SAE: input width ``d``, ``n_latents``, ``k`` active latents per vector, the activation."""

    d: int
    n_latents: int
    k: int
    activation: str = "topk"

    def __post_init__(self):
        for name in ("d", "n_latents", "k"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise SAEError(f"SAE: {name} must be an integer >= 1, got {value!r}")
        if self.k >= self.n_latents:
            raise SAEError(f"SAE: k ({self.k}) must be smaller than n_latents ({self.n_latents})")
        if self.activation not in ACTIVATIONS:
            raise SAEError(f"SAE: activation {self.activation!r} is not one of {list(ACTIVATIONS)}")


@dataclass
class SparseCode:
    """Active latents of b vectors: ``indices`` and ``values`` (nnz,) flat, vector i's in
    ``[offsets[i], offsets[i + 1])``; ``offsets`` (b + 1,)."""

    indices: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def rows(self) -> torch.Tensor:
        """The vector each active entry belongs to (nnz,)."""
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(self.n, device=counts.device), counts)

    def l0(self) -> torch.Tensor:
        """Active latents per vector (b,)."""
        return (self.offsets[1:] - self.offsets[:-1]).float()

    def dense(self, n_latents: int) -> torch.Tensor:
        """The code as a dense (b, n_latents) tensor (for small analyses and tests)."""
        out = torch.zeros(self.n, n_latents, dtype=self.values.dtype, device=self.values.device)
        out[self.rows(), self.indices] = self.values
        return out


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class _SelectedPreActivations(torch.autograd.Function):
    """Values of chosen entries (rows, cols) of ReLU(x_c W^T + b), given them from a no-grad pass, with a backward
    pass that touches only those entries: grad W = G^T x_c, grad x_c = G W, grad b = column sums of G, with G the
    sparse (b, n) gradient (nnz entries), instead of two dense (b x n x d) products."""

    @staticmethod
    def forward(ctx, x_c, weight, bias, rows, cols, values):
        ctx.save_for_backward(x_c, weight, rows, cols, values)
        ctx.n_bias = len(bias)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_c, weight, rows, cols, values = ctx.saved_tensors
        grad = torch.where(values > 0, grad, torch.zeros_like(grad)).to(x_c.dtype)  # the ReLU
        g = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (len(x_c), len(weight)),
                                    check_invariants=False).coalesce()
        grad_w = torch.sparse.mm(g.t(), x_c) if ctx.needs_input_grad[1] else None
        grad_x = torch.sparse.mm(g, weight.to(x_c.dtype)) if ctx.needs_input_grad[0] else None
        grad_b = torch.zeros(ctx.n_bias, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad) \
            if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


class KSAE(nn.Module):
    """A k-sparse autoencoder (module docstring)."""

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None):
        """Decoder rows drawn uniformly (as nn.Linear draws its weights; from ``generator`` when given, so that
        models built side by side in threads stay seeded) and made unit-norm; the encoder starts tied to them with
        a zero bias, so which latents fire depends on the input, not on b_enc."""
        super().__init__()
        self.config = config
        d, n = config.d, config.n_latents
        self.encoder = nn.Linear(d, n)
        self.W_dec = nn.Parameter(torch.empty(n, d))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("threshold", torch.tensor(-1.0))  # batchtopk: < 0 until training has estimated it
        self.register_buffer("input_scale", torch.tensor(1.0))
        with torch.no_grad():
            bound = 1 / d ** 0.5
            self.W_dec.copy_(torch.rand(n, d, generator=generator) * (2 * bound) - bound)
            self.normalize_decoder()
            self.encoder.weight.copy_(self.W_dec)
            self.encoder.bias.zero_()

    # ---- set-up ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the component of each decoder row's gradient along the row (the row stays unit-norm to first order)."""
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
            self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor, iterations: int = 100) -> None:
        """b_pre and the input scale from a sample ``x`` (n, d): b_pre is the geometric median of the scaled sample,
        and the scale makes the mean squared norm of the scaled inputs around b_pre 1. (Scaling the raw norms would
        leave features with a large common offset, such as pooled ones, tiny once b_pre is taken off, and the
        encoder bias would then pick the active latents.)"""
        self._check_input(x)
        x = x.float()
        median = geometric_median(x, iterations)
        self.input_scale.fill_(float((x - median).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)))
        self.b_pre.copy_(median / self.input_scale)

    # ---- forward --------------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.config.d:
            raise SAEError(f"SAE: input must be (b, {self.config.d}), got {tuple(x.shape)}")

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W_enc (x / scale - b_pre) + b_enc), (b, n) float32; x in input units."""
        self._check_input(x)
        with _autocast(x.device):
            pre = self.encoder(x / self.input_scale - self.b_pre)
        return F.relu(pre.float())

    def sparsify(self, pre: torch.Tensor, *, train: bool = False) -> SparseCode:
        """The sparse code of pre-activations (b, n): TopK per vector; BatchTopK over the batch when training, its
        threshold otherwise (TopK while no threshold has been learnt)."""
        b, k = len(pre), self.config.k
        if self.config.activation == "batchtopk" and (train or self.threshold >= 0):
            if train:
                flat = pre.flatten()
                kept = flat.topk(min(k * b, flat.numel())).indices
                mask = torch.zeros_like(flat, dtype=torch.bool)
                mask[kept] = True
                mask = mask.view_as(pre) & (pre > 0)
            else:
                mask = pre > self.threshold
            rows, cols = mask.nonzero(as_tuple=True)
            offsets = torch.zeros(b + 1, dtype=torch.long, device=pre.device)
            offsets[1:] = torch.cumsum(mask.sum(1), 0)
            return SparseCode(cols, pre[rows, cols], offsets)
        values, indices = pre.topk(k, dim=1)
        offsets = torch.arange(0, b * k + 1, k, device=pre.device)
        return SparseCode(indices.flatten(), values.flatten(), offsets)

    def with_grad(self, x: torch.Tensor, code: SparseCode) -> SparseCode:
        """``code`` (chosen from pre-activations computed without gradients) with values that carry gradients to
        the encoder and b_pre through the chosen entries only (``_SelectedPreActivations``)."""
        x_c = x / self.input_scale - self.b_pre
        values = _SelectedPreActivations.apply(x_c, self.encoder.weight, self.encoder.bias, code.rows(),
                                               code.indices, code.values.detach().float())
        return SparseCode(code.indices, values, code.offsets)

    def encode(self, x: torch.Tensor) -> SparseCode:
        """The inference code of x (b, d): TopK, or the learnt BatchTopK threshold."""
        return self.sparsify(self.pre_activations(x))

    def decode(self, code: SparseCode) -> torch.Tensor:
        """x_hat (b, d) in input units, from the active decoder rows only."""
        return self.decode_scaled(code) * self.input_scale

    def decode_scaled(self, code: SparseCode, bias: bool = True) -> torch.Tensor:
        """x_hat in scaled units; ``bias=False`` leaves b_pre out (the AuxK reconstruction of a residual)."""
        out = F.embedding_bag(code.indices, self.W_dec, code.offsets[:-1], mode="sum",
                              per_sample_weights=code.values.to(self.W_dec.dtype), include_last_offset=False)
        return out + self.b_pre if bias else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def update_threshold(self, code: SparseCode, momentum: float = 0.01) -> None:
        """BatchTopK: move the threshold towards the smallest value kept in this batch (running mean)."""
        if len(code.values):
            low = code.values.min()
            self.threshold.copy_(low if self.threshold < 0 else (1 - momentum) * self.threshold + momentum * low)

    # ---- save / load ----------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        """``sae_config.json`` (config + ``extra``, e.g. the training settings) and ``sae.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, folder / WEIGHTS_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps({**asdict(self.config), **(extra or {})}, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device=None) -> "KSAE":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise SAEError(f"SAE: {folder} holds no {CONFIG_FILE} and {WEIGHTS_FILE}")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        sae = cls(SAEConfig(**{k: meta[k] for k in ("d", "n_latents", "k", "activation")}))
        sae.load_state_dict(load_file(folder / WEIGHTS_FILE))
        return sae.to(device or "cpu")


def latent_response(sae: KSAE, x: torch.Tensor, latent: int) -> torch.Tensor:
    """One latent's encoder response ReLU(w_j . (x / scale - b_pre) + b_j) for rows ``x`` (m, d), float32: the
    latent's column of ``sae.pre_activations`` without computing the other latents' columns (its heat map over the
    positions of a map)."""
    with torch.no_grad():
        x = x.to(sae.b_pre.device).float() / sae.input_scale - sae.b_pre.float()
        w, b = sae.encoder.weight[latent].float(), sae.encoder.bias[latent].float()
        return torch.relu(x @ w + b)


def geometric_median(x: torch.Tensor, iterations: int = 100, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's iteration for the point minimising the summed Euclidean distance to the rows of x (n, d)."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= 1e-6 * median.norm().clamp_min(1e-12):
            return new
        median = new
    return median
