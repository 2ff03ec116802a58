"""DDIM sampling through the model layer, on a stand-in model whose noise estimates are known."""
import torch

from difflens.sampling import ddim_sample


class ScaledNoiseModel:
    """Predicts eps = scale * x_t: with scale > 1 the x0 estimates leave the data range [-1, 1]."""

    num_train_timesteps = 1000

    def __init__(self, scale: float):
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.scale = scale
        self.prompts_seen = []

    def encode_text(self, prompts):
        self.prompts_seen.append(list(prompts))
        return torch.zeros(len(prompts), 2, 4)

    def denoise(self, x_t, t, cond):
        return self.scale * x_t


def test_ddim_clips_x0_estimates_to_the_data_range():
    free = ddim_sample(ScaledNoiseModel(0.5), ["a", "b"], (3, 4, 4), steps=10, seed=1)
    clipped = ddim_sample(ScaledNoiseModel(0.5), ["a", "b"], (3, 4, 4), steps=10, seed=1, clip_x0=1.0)
    assert free.abs().max() > 1.5
    assert clipped.abs().max() <= 1.0 + 1e-6 and clipped.abs().max() > 0.5


def test_ddim_is_seeded_and_guides_with_the_empty_prompt():
    model = ScaledNoiseModel(0.9)
    a = ddim_sample(model, ["x", "y"], (3, 4, 4), steps=5, seed=3)
    b = ddim_sample(ScaledNoiseModel(0.9), ["x", "y"], (3, 4, 4), steps=5, seed=3)
    c = ddim_sample(ScaledNoiseModel(0.9), ["x", "y"], (3, 4, 4), steps=5, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert model.prompts_seen == [["x", "y"], ["", ""]]
