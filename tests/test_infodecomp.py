"""The information estimators: importance weights, draw sharing, batch/order invariance, a known answer."""
import numpy as np
import pytest
import torch

from difflens.info.estimators import LogSNRSampler, image_scores, information_scores


class PointMassModel:
    """Denoisers that are exact for a data distribution that is a point mass per prompt.

    Prompt "p<k>" means x0 = k * ones; the empty prompt means x0 = 0. eps_hat(x_a | y) is then the exact noise
    whenever x0 is the prompt's point, so the true prompt has zero error.
    """

    alphas_cumprod = torch.linspace(0.9999, 0.0001, 1000, dtype=torch.float64)

    def __init__(self):
        self.calls = 0

    add_noise_logsnr = staticmethod(lambda x0, n, a: torch.sigmoid(a).sqrt().view(-1, 1, 1, 1) * x0
                                    + torch.sigmoid(-a).sqrt().view(-1, 1, 1, 1) * n)

    def timestep_for_logsnr(self, a):
        return a.clone()  # the fake denoiser reads log-SNR straight from "t"

    def encode_text(self, prompts):
        return torch.tensor([0.0 if p == "" else float(p[1:]) for p in prompts])

    def denoise(self, x, a, cond):
        self.calls += 1
        a = a.view(-1, 1, 1, 1).float()
        x0 = cond.view(-1, 1, 1, 1) * torch.ones_like(x)
        return (x - torch.sigmoid(a).sqrt() * x0) / torch.sigmoid(-a).sqrt()


def test_importance_weights_integrate_a_constant():
    s = LogSNRSampler(loc=1.0, scale=2.0, clip=3.0)
    a, w = s.draw(200_000, torch.Generator().manual_seed(0))
    assert a.min() >= 1 - 6 - 1e-9 and a.max() <= 1 + 6 + 1e-9
    assert float(w.mean()) == pytest.approx(12.0, rel=0.02)  # Int_{-5}^{7} 1 da
    # and a non-constant integrand: Int sigmoid(a) da over the same range
    exact = float(torch.nn.functional.softplus(torch.tensor(7.0)) - torch.nn.functional.softplus(torch.tensor(-5.0)))
    assert float((w * torch.sigmoid(a)).mean()) == pytest.approx(exact, rel=0.02)


def test_true_prompt_wins_and_values_match_closed_form():
    model = PointMassModel()
    x0 = torch.full((1, 2, 2), 1.0)
    sc = information_scores(model, x0[None], [["p1", "p3"]], n_draws=4000, sampler=LogSNRSampler(0, 2, 3))
    # true prompt: zero error; i^s = i^o = 1/2 Int sigmoid(a)/sigmoid(-a) ||x0 - 0||^2 da ... > wrong prompt's
    assert sc.mmse[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert sc.i_s[0, 0] > 0 > sc.i_s[0, 1]
    assert sc.i_s[0, 0] == pytest.approx(sc.i_o[0, 0], rel=1e-4)
    # closed form for the true prompt: 1/2 Int e^a * ||x0||^2 da over [-6, 6] (sigmoid(a)/sigmoid(-a) = e^a)
    closed = 0.5 * 4 * (np.exp(6) - np.exp(-6))
    assert sc.i_s[0, 0] == pytest.approx(closed, rel=0.1)


def test_prompts_share_draws_and_pixelwise_sums_to_total():
    model = PointMassModel()
    x0 = torch.randn(1, 4, 4)
    gen = torch.Generator().manual_seed(1)
    f_s, f_o, err = image_scores(model, x0, ["p1", "p2"], 8, LogSNRSampler(), gen)
    gen = torch.Generator().manual_seed(1)
    p_s, p_o, p_err = image_scores(model, x0, ["p1", "p2"], 8, LogSNRSampler(), gen, pixelwise=True)
    assert p_s.shape == (8, 2, 4, 4)
    torch.testing.assert_close(p_s.sum((2, 3)), f_s)
    torch.testing.assert_close(p_o.sum((2, 3)), f_o)


def test_scores_do_not_depend_on_batch_size_or_order():
    x = torch.randn(5, 1, 3, 3)
    prompts = [["p1", "p2"]] * 5
    a = information_scores(PointMassModel(), x, prompts, n_draws=6, batch_size=64)
    b = information_scores(PointMassModel(), x, prompts, n_draws=6, batch_size=5)
    np.testing.assert_allclose(a.i_s, b.i_s, rtol=1e-6)  # identical draws; only float summation order differs
    order = [4, 2, 0]
    c = information_scores(PointMassModel(), x[order], [prompts[i] for i in order], n_draws=6, sample_keys=order)
    np.testing.assert_allclose(c.i_s, a.i_s[order], rtol=1e-6)
    np.testing.assert_allclose(c.i_o, a.i_o[order], rtol=1e-6)
