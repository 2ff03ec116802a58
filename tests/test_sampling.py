"""DDIM sampling through the model layer: on a stand-in model whose noise estimates are known, and on tiny
random pipelines, against the hand-written update rule it replaced (diffusers' DDIMScheduler.step now)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402
from tiny_pipelines import build_tiny_sd, build_tiny_shapes  # noqa: E402

from difflens.models import load_model  # noqa: E402
from difflens.models.sampling import ddim_sample, sampling_timesteps  # noqa: E402


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


def reference_ddim_sample(model, prompts, latent_shape, *, steps=50, guidance=3.0, seed=0, clip_x0=None):
    """The hand-written DDIM (eta 0) that ``ddim_sample`` replaced by diffusers' DDIMScheduler.step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(prompts), *latent_shape), generator=gen)
    cond = model.encode_text(list(prompts))
    uncond = model.encode_text([""] * len(prompts))
    n = model.num_train_timesteps
    ts = torch.linspace(n - 1, 0, steps).round().long()
    abar = model.alphas_cumprod.to(torch.float32)
    for i, t in enumerate(ts):
        tt = torch.full((len(prompts),), int(t))
        eps = model.denoise(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).cpu()
        eps_u, eps_c = eps.chunk(2)
        e = eps_u + guidance * (eps_c - eps_u)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x


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


@pytest.mark.parametrize("steps", [2, 5, 10, 15, 50])
@pytest.mark.parametrize("scale,clip", [(0.5, None), (0.5, 1.0), (1.3, 1.0), (0.9, 0.5)])
def test_ddim_equals_the_hand_written_update_on_the_stand_in(steps, scale, clip, monkeypatch):
    calls = []
    step = DDIMScheduler.step
    monkeypatch.setattr(DDIMScheduler, "step", lambda self, *a, **k: calls.append(a[1]) or step(self, *a, **k))
    got = ddim_sample(ScaledNoiseModel(scale), ["a", "b"], (3, 4, 4), steps=steps, seed=2, clip_x0=clip)
    want = reference_ddim_sample(ScaledNoiseModel(scale), ["a", "b"], (3, 4, 4), steps=steps, seed=2, clip_x0=clip)
    assert calls == list(range(steps - 1, -1, -1))  # every update is diffusers' step, down the chain
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # bit-identical on CPU with torch 2.14


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"shapes": load_model("shapes", str(build_tiny_shapes(root / "shapes")), device="cpu"),
            "sd": load_model("sd", str(build_tiny_sd(root / "sd")), device="cpu")}


@pytest.mark.parametrize("kind,clip", [("shapes", 1.0), ("sd", None)])
def test_ddim_equals_the_hand_written_update_on_tiny_models(tiny_models, kind, clip):
    """A pixel model (v-prediction, x0 clipped as the model check samples it) and a latent model (epsilon)."""
    model = tiny_models[kind]
    c = getattr(model, "space_to_depth", 1)
    shape = (3 * c * c, model.resolution // c, model.resolution // c) if kind == "shapes" else (4, 8, 8)
    prompts = ["a red circle", "a blue square"]
    for steps in (4, 15):
        got = ddim_sample(model, prompts, shape, steps=steps, guidance=3.0, seed=5, clip_x0=clip)
        want = reference_ddim_sample(model, prompts, shape, steps=steps, guidance=3.0, seed=5, clip_x0=clip)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # bit-identical on CPU with torch 2.14


def test_the_grid_is_diffusers_linspace_but_for_some_middle_timesteps():
    """diffusers' "linspace" spacing is the same grid in float64; it rounds the middle of some odd step counts the
    other way, so the hand-written grid is kept (it gives the samples of earlier runs)."""
    def diffusers_grid(steps):
        scheduler = DDIMScheduler(timestep_spacing="linspace")
        scheduler.set_timesteps(steps)
        return scheduler.timesteps

    for steps in (2, 4, 10, 16, 50, 100):
        assert torch.equal(sampling_timesteps(1000, steps), diffusers_grid(steps))
    ours, theirs = sampling_timesteps(1000, 15), diffusers_grid(15)
    assert (ours != theirs).nonzero().ravel().tolist() == [7] and (ours[7], theirs[7]) == (499, 500)
