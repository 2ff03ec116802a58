"""A Gaussian world where the optimal denoiser, the MMSE curve and the mutual information are known exactly.

``y ~ N(0, 1)`` and ``x | y ~ N(y v, s^2 I)`` on a (C, h, w) grid, so ``x ~ N(0, v v^T + s^2 I)`` and
``I(x; y) = 1/2 log(1 + |v|^2 / s^2)`` nats. For ``x ~ N(m, S)`` and ``x_a = alpha x + sigma eps``
(alpha^2 = sigmoid(a), sigma^2 = sigmoid(-a)) the optimal noise prediction is linear,
``E[eps | x_a] = sigma M (x_a - alpha m)`` with ``M = (alpha^2 S + sigma^2 I)^-1``, and its error given x is
``tr((I - sigma^2 M)^2) + sigma^2 alpha^2 |M (x - m)|^2``: every integrand the estimators average has a closed form,
so their Monte-Carlo estimates can be checked against quadrature.

``GaussianToyModel`` speaks the model layer's language (``log_snr``, ``timestep_for_logsnr``,
``add_noise_logsnr``, ``encode_text``, ``denoise``): prompt ``"y=<value>"`` conditions on y, ``""`` does not.
``FlowGaussianToyModel`` is the same world denoised by a flow-matching velocity model (SD3's and FLUX.1's
parameterisation), through the flow adapters' conversion to epsilon.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.base import log_snr_of, nearest_timestep
from ..models.flow import FlowMatchingMixin, flow_alphas_cumprod


def linear_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alphas_cumprod of a DDPM linear schedule (float64)."""
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, n, dtype=torch.float64), 0)


class GaussianToyModel:
    kind = "text"
    source = "gaussian toy"

    def __init__(self, v: torch.Tensor, s: float, alphas_cumprod: torch.Tensor | None = None):
        self.shape = tuple(v.shape)
        self.v = v.double().flatten()
        self.s = float(s)
        self.alphas_cumprod = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
        self.log_snr = log_snr_of(self.alphas_cumprod)
        self.calls = 0

    # ---- the model-layer interface ------------------------------------------------------------------------
    def timestep_for_logsnr(self, logsnr: torch.Tensor) -> torch.Tensor:
        return nearest_timestep(logsnr, self.log_snr)

    @staticmethod
    def add_noise_logsnr(x0: torch.Tensor, noise: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        a = logsnr.to(torch.float32).view(-1, *[1] * (x0.dim() - 1))
        return torch.sigmoid(a).sqrt() * x0 + torch.sigmoid(-a).sqrt() * noise

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(p[2:])] if p else [float("nan")] for p in prompts], dtype=torch.float64)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The optimal eps prediction for each row (its timestep's log-SNR, its y or none), batched."""
        self.calls += 1
        a = self.log_snr[t.long()]
        S, m = self.row_moments(cond)
        d = len(self.v)
        eye = torch.eye(d, dtype=torch.float64)
        sa, sna = torch.sigmoid(a)[:, None, None], torch.sigmoid(-a)[:, None, None]
        M = torch.linalg.inv(sa * S + sna * eye)
        r = x_t.double().reshape(len(x_t), d) - sa[:, :, 0].sqrt() * m
        out = sna[:, :, 0].sqrt() * (M @ r[:, :, None])[:, :, 0]
        return out.view(x_t.shape).float()

    def row_moments(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(covariance (B, d, d), mean (B, d)) of x given each row's condition: y given, or none (NaN)."""
        y = cond.double().reshape(len(cond), -1)[:, 0]
        uncond = torch.isnan(y)
        eye = torch.eye(len(self.v), dtype=torch.float64)
        S = torch.where(uncond[:, None, None], (self.s ** 2 * eye + torch.outer(self.v, self.v))[None],
                        (self.s ** 2 * eye)[None])
        return S, torch.where(uncond[:, None], 0.0, torch.nan_to_num(y)[:, None] * self.v[None])

    # ---- closed forms -------------------------------------------------------------------------------------
    def _moments(self, y: float, a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, M) of the conditional (y given) or unconditional (y NaN) Gaussian at log-SNR a."""
        d = len(self.v)
        eye = torch.eye(d, dtype=torch.float64)
        if np.isnan(y):
            m, S = torch.zeros(d, dtype=torch.float64), self.s ** 2 * eye + torch.outer(self.v, self.v)
        else:
            m, S = y * self.v, self.s ** 2 * eye
        return m, torch.linalg.inv(_sig(a) * S + _sig(-a) * eye)

    def mutual_information(self) -> float:
        """I(x; y) over the whole log-SNR line, nats."""
        return 0.5 * float(np.log1p(float(self.v @ self.v) / self.s ** 2))

    def mmse(self, a: float, y: float = float("nan")) -> float:
        """E ||eps - eps_hat(x_a)||^2 over x (and y when unconditional) and eps: tr(I - sigma^2 M)."""
        _, M = self._moments(y, a)
        return float(len(self.v) - _sig(-a) * torch.trace(M))

    def point_error(self, x: torch.Tensor, a: float, y: float = float("nan")) -> float:
        """E_eps ||eps - eps_hat(x_a | y)||^2 for the point x (C, h, w): tr((I - sigma^2 M)^2) + sigma^2 alpha^2
        |M (x - m)|^2 (y NaN: the unconditional denoiser)."""
        m, M = self._moments(y, a)
        x = x.double().flatten()
        eye = torch.eye(len(self.v), dtype=torch.float64)
        return float(((eye - _sig(-a) * M) ** 2).sum() + _sig(-a) * _sig(a) * ((M @ (x - m)) ** 2).sum())

    def point_integrands(self, x: torch.Tensor, y: float, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i_s, i_o) integrands E_eps[...] at the log-SNRs ``a`` for the point x (C, h, w) and prompt y (vs no
        prompt), vectorised over ``a``."""
        x = x.double().flatten()
        a = torch.as_tensor(np.atleast_1d(a), dtype=torch.float64)
        d = len(self.v)
        eye = torch.eye(d, dtype=torch.float64)
        sa, sna = torch.sigmoid(a)[:, None, None], torch.sigmoid(-a)[:, None, None]
        S_u = self.s ** 2 * eye + torch.outer(self.v, self.v)
        Mu = torch.linalg.inv(sa * S_u + sna * eye)
        Mc = torch.linalg.inv(sa * self.s ** 2 * eye + sna * eye)
        mc = y * self.v

        def err(M, m):
            return ((eye - sna * M) ** 2).sum((1, 2)) + (sna * sa)[:, 0, 0] * ((M @ (x - m)) ** 2).sum(1)

        # eps_hat_u - eps_hat_c = sigma [(Mu - Mc)(alpha x + sigma eps) + alpha Mc mc]  (the unconditional mean is 0)
        D = Mu - Mc
        mean = (sna.sqrt() * sa.sqrt())[:, 0] * (D @ x + Mc @ mc)
        gap = (mean ** 2).sum(1) + (sna ** 2)[:, 0, 0] * (D ** 2).sum((1, 2))
        return (err(Mu, torch.zeros(d, dtype=torch.float64)) - err(Mc, mc)).numpy(), gap.numpy()

    def point_information(self, x: torch.Tensor, y: float, interval: tuple[float, float],
                          n: int = 2001) -> tuple[float, float]:
        """(i_s, i_o) of the point (x, y): 1/2 the integrals over ``interval`` of ``point_integrands``, by the
        trapezoid rule on ``n`` points (the value the estimators converge to)."""
        grid = np.linspace(*interval, n)
        f_s, f_o = self.point_integrands(x, y, grid)
        return 0.5 * float(np.trapezoid(f_s, grid)), 0.5 * float(np.trapezoid(f_o, grid))

    def information_on(self, interval: tuple[float, float], n: int = 2001) -> float:
        """1/2 Int (mmse_unconditional - mmse_conditional) da over ``interval``: I(x; y) restricted to it."""
        grid = np.linspace(*interval, n)
        gaps = [self.mmse(a) - self.mmse(a, 0.0) for a in grid]  # the conditional MMSE does not depend on y
        return 0.5 * float(np.trapezoid(gaps, grid))

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """n draws (x (n, C, h, w) float32, y (n,)) from the joint distribution."""
        gen = torch.Generator().manual_seed(seed)
        y = torch.randn(n, generator=gen, dtype=torch.float64)
        x = y[:, None] * self.v[None] + self.s * torch.randn((n, len(self.v)), generator=gen, dtype=torch.float64)
        return x.view(n, *self.shape).float(), y.numpy()


def _sig(a: float) -> float:
    return 1.0 / (1.0 + np.exp(-a))


class FlowGaussianToyModel(FlowMatchingMixin, GaussianToyModel):
    """The same Gaussian world served by a flow-matching "network": the optimal velocity ``E[eps - x0 | x_s]`` for
    ``x_s = (1 - s) x0 + s eps`` written in the flow parameterisation (with ``K = (1 - s)^2 S + s^2 I``,
    ``E[eps | x_s] = s K^-1 r`` and ``E[x0 | x_s] = m + (1 - s) S K^-1 r``, ``r = x_s - (1 - s) m``), on the flow
    models' timestep table, and turned into epsilon by the flow adapters' own conversion (``FlowMatchingMixin``).
    Its closed forms (the variance-preserving ones it inherits) hold unchanged: the channel is the same."""

    def __init__(self, v: torch.Tensor, s: float):
        super().__init__(v, s, flow_alphas_cumprod(self.flow_steps))
        self.dtype = torch.float64

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self._forward(x_t.double(), t.long(), cond).float()

    def _velocity(self, x_s: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = s.double()[:, None, None]
        S, m = self.row_moments(cond)
        d = len(self.v)
        eye = torch.eye(d, dtype=torch.float64)
        K_inv_r = torch.linalg.solve((1 - s) ** 2 * S + s ** 2 * eye,
                                     (x_s.double().reshape(len(x_s), d) - (1 - s[:, :, 0]) * m)[:, :, None])
        eps = s * K_inv_r
        x0 = m[:, :, None] + (1 - s) * (S @ K_inv_r)
        return (eps - x0)[:, :, 0].view(x_s.shape)
