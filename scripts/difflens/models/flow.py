"""Flow-matching backbones (SD3 / SD3.5, FLUX.1) in the variance-preserving terms the rest of difflens uses.

A flow-matching model noises as ``x_s = (1 - s) x0 + s eps`` with ``s = t / N`` (``t`` the model's timestep, N its
``num_train_timesteps``, 1000) and predicts the velocity ``v = eps - x0``. That is the Gaussian channel of log-SNR
``2 log((1 - s) / s)``; in variance-preserving form ``x = x_s / c`` with ``c = sqrt((1 - s)^2 + s^2)`` and
``abar = (1 - s)^2 / c^2``. So a flow adapter exposes an ``alphas_cumprod`` table like any other model, takes
variance-preserving inputs in ``denoise`` (as every adapter does), rescales them to the ``x_s`` the model was
trained on (exactly its own input: the same noise draw gives the same ``x_s`` as the model's own noising), and
returns ``eps_hat = x_s + (1 - s) v_hat``. Extraction, the information estimators and DDIM then need nothing new.
The configured timesteps run 0 .. N - 1 in the model's units; timestep 0, the clean image (log-SNR +inf), is read at
half a step, s = 1 / (2 N) (log-SNR 15.2 for N = 1000), so that every table stays finite.
"""
from __future__ import annotations

import functools
from abc import abstractmethod
from types import SimpleNamespace

import torch


@functools.cache
def flow_sigmas(n: int) -> torch.Tensor:
    """s = t / n for each timestep t in 0 .. n - 1 (float64); timestep 0 at half a step, 1 / (2 n). Computed once per
    n (every denoiser call reads it): callers must not modify it."""
    return torch.arange(n, dtype=torch.float64).clamp(min=0.5) / n


def flow_alphas_cumprod(n: int = 1000) -> torch.Tensor:
    """The variance-preserving alpha_bar of each flow timestep: (1 - s)^2 / ((1 - s)^2 + s^2)."""
    s = flow_sigmas(n)
    return (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)


def flow_log_snr(s: torch.Tensor) -> torch.Tensor:
    """log-SNR of the flow channel at s: 2 log((1 - s) / s)."""
    return 2 * torch.log((1 - s) / s)


def flow_schedule(n: int = 1000) -> SimpleNamespace:
    """What the base class reads from a scheduler: ``alphas_cumprod`` (and the step count)."""
    return SimpleNamespace(alphas_cumprod=flow_alphas_cumprod(n), config=SimpleNamespace(num_train_timesteps=n,
                                                                                          prediction_type="flow"))


def velocity_to_epsilon(v: torch.Tensor, x_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """eps_hat = x_s + (1 - s) v_hat (``s`` per sample, (B,))."""
    s = s.to(v.device, torch.float32).view(-1, *[1] * (v.dim() - 1))
    return x_s.float() + (1 - s) * v.float()


class FlowMatchingMixin:
    """``_forward`` of a flow-matching adapter: variance-preserving ``x`` at timestep ``t`` -> ``x_s`` -> velocity
    (``_velocity``, in the model's units) -> epsilon. Set ``flow_steps`` (N) and build the base class with
    ``scheduler=flow_schedule(N)``."""

    flow_steps: int = 1000

    @abstractmethod
    def _velocity(self, x_s: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The model's velocity at ``x_s`` (model dtype) and s = t / N per sample (float32, (B,))."""

    def _forward(self, x_t, t, cond):
        s = flow_sigmas(self.flow_steps).to(t.device)[t.long()].to(torch.float32)
        scale = ((1 - s) ** 2 + s ** 2).sqrt().view(-1, *[1] * (x_t.dim() - 1))
        x_s = x_t.float() * scale
        v = self._velocity(x_s.to(self.dtype), s, cond)
        return velocity_to_epsilon(v, x_s, s)
