"""The newer families (SDXL, PixArt-Sigma, SD3, FLUX.1) through their adapters, held against their own diffusers
pipelines: conditions as each pipeline's ``encode_prompt`` builds them, one denoiser call as each pipeline makes it
(SDXL's time ids, PixArt's mask, SD3's and FLUX's flow-matching timesteps, FLUX's packed latents), the flow-matching
noise in variance-preserving terms, block outputs as maps, joint-attention DAAM against the attention the blocks
compute, T5 sub-token words, the distilled-model warning and the config checks."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from difflens.config import ConfigError, validate_config
from difflens.models import load_model
from difflens.models.catalog import static_layers, static_log_snr_range
from difflens.models.flow import flow_sigmas
from test_model_refusal import config_with
from tiny_families import FAMILY_BUILDERS, build_tiny_flux

SEQ = 12  # T5 tokens per prompt of the tiny models
OPTIONS = {"sdxl": {}, "pixart": {"max_sequence_length": SEQ}, "sd3": {"max_sequence_length": SEQ},
           "flux": {"max_sequence_length": SEQ, "guidance": 2.0}}
PROMPTS = ["a red triangle to the left of a blue circle", ""]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {kind: build(root / kind) for kind, build in FAMILY_BUILDERS.items()}


@pytest.fixture(scope="module")
def models(folders):
    return {kind: load_model(kind, str(folders[kind]), dtype="float32", device="cpu", resolution=16, **OPTIONS[kind])
            for kind in folders}


def pipeline(kind: str, folder: Path, **components):
    from diffusers import FluxPipeline, PixArtSigmaPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    cls = {"sdxl": StableDiffusionXLPipeline, "pixart": PixArtSigmaPipeline, "sd3": StableDiffusion3Pipeline,
           "flux": FluxPipeline}[kind]
    return cls.from_pretrained(folder, local_files_only=True, **components)


def test_layers_read_from_the_configs_are_the_loaded_models(folders, models):
    for kind, model in models.items():
        assert static_layers(kind, str(folders[kind])) == model.layers(), kind
    assert models["flux"].layers() == ["transformer_blocks.0", "single_transformer_blocks.0",
                                       "single_transformer_blocks.1"]
    assert models["sdxl"].canonical_layer("up_ft1") == "up_blocks.1"
    # hub ids not on disk yet: the public checkpoints' blocks
    assert len(static_layers("flux", "black-forest-labs/FLUX.1-schnell")) == 19 + 38
    assert len(static_layers("sd3", "stabilityai/stable-diffusion-3.5-medium")) == 24
    assert static_layers("sdxl", "stabilityai/stable-diffusion-xl-base-1.0")[-1] == "up_blocks.2"


def test_conditions_are_the_pipelines_own(folders, models):
    with torch.no_grad():
        pe, ne, pp, npool = pipeline("sdxl", folders["sdxl"]).encode_prompt(PROMPTS[0], device="cpu")
        seq, pooled, _ = models["sdxl"].layout.unpack(models["sdxl"].encode_text(PROMPTS))
        torch.testing.assert_close(seq[:1], pe), torch.testing.assert_close(pooled[:1], pp)
        # SDXL base's force_zeros_for_empty_prompt: the empty prompt is zeros, as the pipeline's negative
        assert not ne.any() and not npool.any() and not seq[1].any() and not pooled[1].any()

        pe, mask, _, _ = pipeline("pixart", folders["pixart"]).encode_prompt(
            PROMPTS[0], do_classifier_free_guidance=False, device="cpu", max_sequence_length=SEQ)
        seq, _, m = models["pixart"].layout.unpack(models["pixart"].encode_text(PROMPTS[:1]))
        torch.testing.assert_close(seq, pe), torch.testing.assert_close(m, mask.float())

        pe, _, pp, _ = pipeline("sd3", folders["sd3"]).encode_prompt(
            PROMPTS[0], None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=SEQ)
        seq, pooled, _ = models["sd3"].layout.unpack(models["sd3"].encode_text(PROMPTS[:1]))
        torch.testing.assert_close(seq, pe), torch.testing.assert_close(pooled, pp)
        # without T5 (t5: false), as the pipeline runs without text_encoder_3: zeros in its place
        no_t5 = load_model("sd3", str(folders["sd3"]), dtype="float32", device="cpu", max_sequence_length=SEQ,
                           t5=False)
        pe, _, pp, _ = pipeline("sd3", folders["sd3"], text_encoder_3=None, tokenizer_3=None).encode_prompt(
            PROMPTS[0], None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=SEQ)
        seq, pooled, _ = no_t5.layout.unpack(no_t5.encode_text(PROMPTS[:1]))
        torch.testing.assert_close(seq, pe), torch.testing.assert_close(pooled, pp)
        assert no_t5.text_encoder_3 is None and not seq[:, -SEQ:].any()

        pe, pp, _ = pipeline("flux", folders["flux"]).encode_prompt(PROMPTS[0], device="cpu",
                                                                     max_sequence_length=SEQ)
        seq, pooled, _ = models["flux"].layout.unpack(models["flux"].encode_text(PROMPTS[:1]))
        torch.testing.assert_close(seq, pe), torch.testing.assert_close(pooled, pp)


def flow_input(x0, eps, t):
    s = flow_sigmas(1000)[t].float().view(-1, 1, 1, 1)
    return s, (1 - s) * x0 + s * eps


def test_one_denoiser_call_is_the_pipelines_own(folders, models):
    """Each adapter's epsilon at (x0, eps, t) from the denoiser called as its pipeline calls it: SDXL with the
    pipeline's time ids, PixArt with its mask, SD3 at x_s = (1 - s) x0 + s eps and timestep 1000 s, FLUX on the
    pipeline's packed latents and position ids, the velocities turned into eps = x_s + (1 - s) v."""
    from diffusers import FluxPipeline

    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((2, 4, 8, 8), generator=gen), torch.randn((2, 4, 8, 8), generator=gen)
    t = torch.tensor([30, 700])
    with torch.no_grad():
        m = models["sdxl"]
        pipe = pipeline("sdxl", folders["sdxl"])
        seq, pooled, _ = m.layout.unpack(m.encode_text(PROMPTS))
        ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32,
                                     pipe.text_encoder_2.config.projection_dim).repeat(2, 1)
        x_t = m.add_noise(x0, eps, t)
        want = pipe.unet(x_t, t, encoder_hidden_states=seq, added_cond_kwargs={"text_embeds": pooled,
                                                                               "time_ids": ids}).sample
        torch.testing.assert_close(m.denoise(x_t, t, m.encode_text(PROMPTS)), want)

        m = models["pixart"]
        seq, _, mask = m.layout.unpack(m.encode_text(PROMPTS))
        x_t = m.add_noise(x0, eps, t)
        want = m.transformer(x_t, encoder_hidden_states=seq, encoder_attention_mask=mask, timestep=t,
                             added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample[:, :4]
        torch.testing.assert_close(m.denoise(x_t, t, m.encode_text(PROMPTS)), want)

        m = models["sd3"]
        seq, pooled, _ = m.layout.unpack(m.encode_text(PROMPTS))
        s, x_s = flow_input(x0, eps, t)
        v = m.transformer(hidden_states=x_s, timestep=1000 * s.flatten(), encoder_hidden_states=seq,
                          pooled_projections=pooled).sample
        got = m.denoise(m.add_noise(x0, eps, t), t, m.encode_text(PROMPTS))
        torch.testing.assert_close(got, x_s + (1 - s) * v, rtol=1e-4, atol=1e-4)

        m = models["flux"]
        seq, pooled, _ = m.layout.unpack(m.encode_text(PROMPTS))
        s, x_s = flow_input(x0, eps, t)
        packed = FluxPipeline._pack_latents(x_s, 2, 4, 8, 8)
        img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)
        v = m.transformer(packed, timestep=s.flatten(), guidance=torch.full((2,), 2.0), pooled_projections=pooled,
                          encoder_hidden_states=seq, txt_ids=torch.zeros(SEQ, 3), img_ids=img_ids).sample
        v = FluxPipeline._unpack_latents(v, 16, 16, 2)
        got = m.denoise(m.add_noise(x0, eps, t), t, m.encode_text(PROMPTS))
        torch.testing.assert_close(got, x_s + (1 - s) * v, rtol=1e-4, atol=1e-4)
        # the estimator's view: eps_hat is the noise that was drawn when the velocity is the true one
        torch.testing.assert_close(x_s + (1 - s) * (eps - x0), eps, rtol=1e-5, atol=1e-5)


def test_flow_models_speak_variance_preserving_terms(models):
    m = models["sd3"]
    t = torch.arange(1, 1000)
    s = t.double() / 1000
    torch.testing.assert_close(m.log_snr[1:], 2 * torch.log((1 - s) / s))
    assert math.isfinite(float(m.log_snr[0])) and float(m.log_snr[0]) > float(m.log_snr[1])  # t = 0: half a step
    lo, hi = static_log_snr_range(str(m.source), "sd3")
    assert (lo, hi) == pytest.approx((float(m.log_snr.min()), float(m.log_snr.max())))
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    s, x_s = flow_input(x0, eps, t)
    scale = ((1 - s) ** 2 + s ** 2).sqrt()
    torch.testing.assert_close(m.add_noise(x0, eps, t) * scale, x_s)  # the model's own input, rescaled
    # the same log-SNR noised by the static rule lands on the same input
    torch.testing.assert_close(m.add_noise_logsnr(x0, eps, m.log_snr[t]), m.add_noise(x0, eps, t))


def test_block_outputs_become_maps_position_by_position(models):
    """FLUX's single-stream block: its image tokens (after the text ones), token i * w + j at map cell (i, j)."""
    m = models["flux"]
    block = m.transformer.single_transformer_blocks[1]
    raw = {}
    handle = block.register_forward_hook(lambda _m, _i, out: raw.setdefault("tokens", out[1]))
    x, cond = torch.randn(2, 4, 8, 8), m.encode_text(PROMPTS)
    try:
        maps = m.capture(x, 300, cond, ["single_transformer_blocks.1"])["single_transformer_blocks.1"]
    finally:
        handle.remove()
    tokens = raw["tokens"]
    assert maps.shape == (2, tokens.shape[-1], 4, 4) and tokens.shape[1] == 16
    for i, j in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        torch.testing.assert_close(maps[:, :, i, j], tokens[:, i * 4 + j])


def sdpa_calls(monkeypatch) -> list:
    """Every scaled_dot_product_attention call's (q, k) in (B, H, L, D), captured as torch computes it."""
    calls, original = [], torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, *args, **kwargs):
        calls.append((query.detach().clone(), key.detach().clone()))
        return original(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_joint_attention_daam_is_the_attention_the_blocks_compute(models, monkeypatch, kind):
    """The recorded image-to-text probabilities equal softmax(q k^T / sqrt(d)) of the queries and keys the blocks
    pass to torch's attention (image rows, text columns: SD3 puts the text last, FLUX first); the output is
    unchanged by the recording."""
    from difflens.models.attention import record_cross_attention

    m = models[kind]
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([100, 800]), m.encode_text(PROMPTS)
    plain = m.denoise(x, t, cond)
    calls = sdpa_calls(monkeypatch)
    with record_cross_attention(m) as rec:
        recorded = m.denoise(x, t, cond)
    torch.testing.assert_close(recorded, plain)
    first, n_text = m.attention_text
    layers = list(rec.maps)
    assert len(calls) == len(layers) == len(m.layers())
    for layer, (q, k) in zip(layers, calls):
        p = ((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
        total = k.shape[2]
        image, text = (slice(total - 16, None), slice(0, n_text)) if first else (slice(0, 16), slice(16, 16 + n_text))
        want = p[:, image, text].transpose(1, 2).reshape(2, n_text, 4, 4)
        torch.testing.assert_close(rec.maps[layer], want, rtol=1e-4, atol=1e-6)


def test_t5_sub_token_words_are_averaged(models):
    """'triangle' is two T5 pieces (▁tri, angle): its attention map is the mean of both tokens' maps."""
    from difflens.info.localize import word_attention, word_tokens

    caption = PROMPTS[0]
    for kind in ("flux", "pixart"):
        idx = word_tokens(models[kind], caption, "triangle", "s0")
        assert len(idx) == 2 and idx[1] == idx[0] + 1, kind
    tokens = torch.rand(SEQ, 4, 4)
    got = word_attention(models["flux"], tokens, caption, ["triangle", "red"], "s0")
    idx = word_tokens(models["flux"], caption, "triangle", "s0")
    np.testing.assert_allclose(got[0], tokens[idx].mean(0).numpy())
    with pytest.raises(ValueError, match="within the text encoder's 12 tokens"):
        word_tokens(models["flux"], caption + " and a green square" * 3, "square", "s1")


def test_distilled_models_are_warned_about(tmp_path, folders, caplog):
    caplog.set_level(logging.WARNING)
    load_model("sd3", str(folders["sd3"]), device="cpu", components=["vae"])
    assert "distilled" not in caplog.text
    load_model("flux", str(folders["flux"]), device="cpu", components=["vae"])  # a guidance embedding: FLUX.1-dev
    assert "guidance-distilled" in caplog.text and "not an MMSE estimate" in caplog.text
    caplog.clear()
    schnell = build_tiny_flux(tmp_path / "tiny-flux-schnell", guidance=False)
    load_model("flux", str(schnell), device="cpu", components=["vae"])
    assert "timestep-distilled" in caplog.text


def test_sdxl_vae_runs_in_float32_when_the_model_is_float16(folders):
    m = load_model("sdxl", str(folders["sdxl"]), dtype=torch.float16, device="cpu", components=["vae", "denoiser"])
    assert next(m.vae.parameters()).dtype == torch.float32 and next(m.unet.parameters()).dtype == torch.float16


def test_config_checks_name_the_key_the_units_and_the_choices(folders):
    flux = {"kind": "flux", "source": str(folders["flux"])}
    with pytest.raises(ConfigError, match=r"models.other.timesteps: timestep 1000 .* 0..999 \(flow matching"):
        validate_config(config_with({**flux, "timesteps": [1000]}))
    with pytest.raises(ConfigError, match=r"models.other.options: \['t5'\] are not options of kind 'pixart'"):
        validate_config(config_with({"kind": "pixart", "source": str(folders["pixart"]), "options": {"t5": False}}))
    with pytest.raises(ConfigError, match=r"models.other.layers: .*single_transformer_blocks.1"):
        validate_config(config_with({**flux, "layers": ["single_transformer_blocks.7"]}))
    ok = validate_config(config_with({**flux, "layers": ["single_transformer_blocks.1"], "timesteps": [0, 999],
                                      "options": {"guidance": 3.5}}))
    assert ok["models"]["other"]["options"] == {"guidance": 3.5}


def test_sd3_fetched_without_t5_says_how_to_get_it(folders, tmp_path):
    import shutil

    from difflens.models.catalog import ModelConfigError
    from difflens.models.fetch import select_files, unneeded_folders

    files = sorted(p.relative_to(folders["sd3"]).as_posix() for p in folders["sd3"].rglob("*") if p.is_file())
    skip = unneeded_folders("sd3", {"t5": False})
    assert not any(f.startswith(skip) for f in select_files("sd3", files, skip))
    assert unneeded_folders("sd3", {}) == unneeded_folders("flux", {"t5": False}) == ()
    no_t5 = tmp_path / "sd3-no-t5"
    shutil.copytree(folders["sd3"], no_t5, ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    with pytest.raises(ModelConfigError, match="no text_encoder_3 folder .* options.t5: false"):
        load_model("sd3", str(no_t5), device="cpu", max_sequence_length=SEQ)
    assert load_model("sd3", str(no_t5), device="cpu", max_sequence_length=SEQ, t5=False).text_encoder_3 is None


@pytest.mark.parametrize("kind", ["sdxl", "pixart", "sd3", "flux"])
def test_maps_do_not_depend_on_the_batch(models, kind):
    """Each row's maps and noise prediction are the same in a batch of three as alone (mixed timesteps and prompts)."""
    m = models[kind]
    layer = m.layers()[-1]
    x, t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 500, 995])
    cond = m.encode_text([PROMPTS[0], "", "a blue square"])
    batch = m.capture(x, t, cond, [layer])[layer]
    eps = m.denoise(x, t, cond)
    for i in range(3):
        alone = m.capture(x[i:i + 1], t[i:i + 1], cond[i:i + 1], [layer])[layer]
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(eps[i:i + 1], m.denoise(x[i:i + 1], t[i:i + 1], cond[i:i + 1]), rtol=1e-4,
                                   atol=1e-5)


def test_pixart_alpha_1024_takes_resolution_and_aspect_ratio():
    """PixArt-alpha's 1024 px transformer leaves use_additional_conditions unset and turns it on for its 128-cell
    sample size: the adapter passes the resolution and aspect ratio, as PixArtAlphaPipeline does."""
    from diffusers import DDPMScheduler, PixArtTransformer2DModel

    from difflens.models.pixart import PixArtModel

    torch.manual_seed(0)
    net = PixArtTransformer2DModel(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8,
                                   num_layers=1, cross_attention_dim=24, norm_type="ada_norm_single", sample_size=128,
                                   patch_size=2, caption_channels=8)
    assert net.config.use_additional_conditions is None and net.use_additional_conditions
    model = PixArtModel(transformer=net, vae=None, text_encoder=None, tokenizer=None, transformer_config=net.config,
                        max_sequence_length=4, scheduler=DDPMScheduler(beta_schedule="linear"), device=torch.device("cpu"),
                        dtype=torch.float32, resolution=16, components=("denoiser",))
    assert model.extra_conditions
    cond = model.layout.pack(torch.randn(2, 4, 8), mask=torch.ones(2, 4))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    want = net(x, encoder_hidden_states=cond[:, :4, :8], timestep=t, encoder_attention_mask=cond[:, :4, 8],
               added_cond_kwargs={"resolution": torch.tensor([[16.0, 16.0]] * 2),
                                  "aspect_ratio": torch.ones(2, 1)}).sample[:, :4]
    torch.testing.assert_close(model.denoise(x, t, cond), want)
