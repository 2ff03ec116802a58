"""Model adapters (SD, DiT, shapes) and the cross-attention probe, on tiny random pipelines saved to disk.

Every model is loaded through ``difflens.models.load_model`` from a folder written by ``save_pretrained``: the code
path real checkpoints take. CPU only, nothing downloaded.
"""
from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tiny_pipelines import MAX_TOKENS, build_tiny_dit, build_tiny_sd, build_tiny_shapes, tiny_clip_tokenizer  # noqa: E402

from difflens.models import ModelConfigError, load_model  # noqa: E402
from difflens.models.attention import (aggregate_maps, cross_attention_modules, record_cross_attention,  # noqa: E402
                                       word_token_indices)
from difflens.models.unet import epsilon_from_prediction  # noqa: E402

DIT_CLASSES = ["cat", "dog, puppy", "bird"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture(scope="module")
def sd(sd_dir):
    return load_model("sd", str(sd_dir))


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory):
    return build_tiny_dit(tmp_path_factory.mktemp("models") / "dit", DIT_CLASSES)


@pytest.fixture(scope="module")
def dit(dit_dir):
    return load_model("dit", str(dit_dir))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return load_model("shapes", str(build_tiny_shapes(tmp_path_factory.mktemp("models") / "shapes")))


def _pixels(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, model.resolution, model.resolution, generator=g) * 2 - 1


def _noisy(model, n=2, t=400, seed=0):
    x0 = model.encode_images(_pixels(model, n, seed))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    return model.add_noise(x0, eps, torch.full((n,), t))


# ---- Stable Diffusion ----------------------------------------------------------------------------------------
def test_sd_loads_from_saved_pipeline(sd, sd_dir):
    from diffusers import PNDMScheduler

    assert sd.kind == "sd" and sd.source == str(sd_dir)
    assert sd.dtype == torch.float32  # dtype "auto" on a CPU
    assert sd.resolution == 16  # unet sample_size 8 x VAE scale factor 2
    assert sd.prediction_type == "epsilon"
    saved = PNDMScheduler.from_pretrained(sd_dir / "scheduler")  # the scheduler class the folder holds
    torch.testing.assert_close(sd.alphas_cumprod.float(), saved.alphas_cumprod.float())


def test_sd_encode_images_is_vae_mode_times_scaling(sd, sd_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sd_dir / "vae")
    px = _pixels(sd, 3)
    with torch.no_grad():
        expected = vae.encode(px).latent_dist.mode() * vae.config.scaling_factor
    got = sd.encode_images(px)
    assert got.dtype == torch.float32 and got.shape == (3, 4, 8, 8)
    torch.testing.assert_close(got, expected)
    sd.vae_batch_size = 2  # chunked encoding gives the same latents
    try:
        torch.testing.assert_close(sd.encode_images(px), got)
    finally:
        sd.vae_batch_size = 16
    assert sd.decode_latents(got).shape == px.shape


def test_text_cache_is_bounded_and_keeps_pinned_conditions(sd):
    """A least-recently-used cache of text_cache_size encodings, and of text_cache_bytes after a call; set_condition
    entries are never evicted."""
    before = sd.text_cache_size
    fresh = {p: sd._encode_prompts([p])[0].detach().clone() for p in ("a", "b", "c")}
    try:
        sd.text_cache_size = 2
        sd._text_cache.clear()
        sd.set_condition("pinned", torch.zeros(MAX_TOKENS, 32))
        for p in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
            torch.testing.assert_close(sd.encode_text([p])[0], fresh[p])
        assert list(sd._text_cache) == ["a", "c"]
        assert float(sd.encode_text(["pinned"]).abs().sum()) == 0
        with pytest.raises(ValueError, match="3 distinct prompts in one call exceed text_cache_size 2"):
            sd.encode_text(["a", "b", "c"])
        # and a byte budget: room for one encoding keeps the last prompt alone (a call still gets all of its own)
        sd.text_cache_size, sd.text_cache_bytes = 4, fresh["a"].numel() * 4
        got = sd.encode_text(["b", "a"])
        torch.testing.assert_close(got[0], fresh["b"])
        assert list(sd._text_cache) == ["a"]
    finally:
        sd.text_cache_size = before
        sd.__dict__.pop("text_cache_bytes", None)
        sd._pinned.pop("pinned", None)


def test_encode_text_batches_and_caches(sd):
    calls = []
    handle = sd.text_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        sd._text_cache.clear()
        first = sd.encode_text(["a red cat", "", "a red cat"])
        assert calls == [2]  # one batched call for the two distinct prompts
        assert first.shape == (3, MAX_TOKENS, 32)
        torch.testing.assert_close(first[0], first[2])
        again = sd.encode_text(["", "a red cat"])
        assert calls == [2]  # served from the cache
        torch.testing.assert_close(again, first[[1, 0]])
    finally:
        handle.remove()
    ids = sd.tokenizer(["a red cat"], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(first[0], sd.text_encoder(ids)[0][0])


def test_add_noise_and_logsnr(sd, sd_dir):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(sd_dir / "scheduler")
    x0, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(sd.add_noise(x0, eps, t), sched.add_noise(x0, eps, t))
    a = sd.log_snr[t]
    torch.testing.assert_close(sd.add_noise_logsnr(x0, eps, a), sd.add_noise(x0, eps, t))
    assert torch.equal(sd.timestep_for_logsnr(a), t)
    # a value between two grid points maps to the nearer one
    mid = 0.3 * sd.log_snr[100] + 0.7 * sd.log_snr[101]
    assert int(sd.timestep_for_logsnr(mid.view(1))) == 101


def test_sd_layers_and_aliases(sd, sd_dir):
    from difflens.models import adapter_class

    expected = ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
    assert sd.layers() == expected
    assert adapter_class("sd").static_layers(str(sd_dir)) == expected
    assert sd.canonical_layer("bottleneck") == "mid_block"
    assert sd.canonical_layer("up_ft1") == "up_blocks.1"
    assert sd.canonical_layer("up_blocks.0") == "up_blocks.0"
    with pytest.raises(ModelConfigError, match=r"'up_ft3'.*mid_block.*bottleneck"):
        sd.canonical_layer("up_ft3")  # the tiny UNet has 2 up blocks


def test_capture_stop_early_matches_full_pass_and_stops(sd):
    x_t, cond = _noisy(sd), sd.encode_text(["a red cat", ""])
    runs = {"up_blocks.1": 0, "conv_out": 0}
    counters = [sd.unet.up_blocks[1].register_forward_hook(lambda *a: runs.__setitem__("up_blocks.1",
                                                                                        runs["up_blocks.1"] + 1)),
                sd.unet.conv_out.register_forward_hook(lambda *a: runs.__setitem__("conv_out", runs["conv_out"] + 1))]
    try:
        early = sd.capture(x_t, 400, cond, ["bottleneck", "up_ft0"], stop_early=True)
        assert runs == {"up_blocks.1": 0, "conv_out": 0}  # nothing after up_blocks.0 ran
        full = sd.capture(x_t, 400, cond, ["bottleneck", "up_ft0"], stop_early=False)
        assert runs == {"up_blocks.1": 1, "conv_out": 1}
    finally:
        for h in counters:
            h.remove()
    # reference: plain forward hooks on a complete denoise call
    ref, handles = {}, []
    for path in ("mid_block", "up_blocks.0"):
        mod = sd.layer_modules()[path]
        handles.append(mod.register_forward_hook(lambda m, a, out, p=path: ref.__setitem__(p, out)))
    sd.denoise(x_t, 400, cond)
    for h in handles:
        h.remove()
    assert set(early) == {"bottleneck", "up_ft0"}
    assert early["up_ft0"].shape == (2, 64, 8, 8) and early["bottleneck"].shape == (2, 64, 4, 4)
    for name, path in (("bottleneck", "mid_block"), ("up_ft0", "up_blocks.0")):
        torch.testing.assert_close(early[name], ref[path])
        torch.testing.assert_close(full[name], ref[path])


def test_epsilon_from_v_prediction_numerically():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    abar = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    a = abar.float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(epsilon_from_prediction(v, x_t, abar, "v_prediction"), eps)
    torch.testing.assert_close(epsilon_from_prediction(x0, x_t, abar, "sample"), eps, rtol=1e-4, atol=1e-4)
    as_is = epsilon_from_prediction(eps.half(), x_t, abar, "epsilon")  # the prediction itself, in float32
    assert as_is.dtype == torch.float32 and torch.equal(as_is, eps.half().float())
    with pytest.raises(ModelConfigError, match="'flow'.*v_prediction"):
        epsilon_from_prediction(v, x_t, abar, "flow")


def test_sd_v_prediction_model_denoise_returns_epsilon(sd_dir, tmp_path):
    vdir = tmp_path / "sd_v"
    shutil.copytree(sd_dir, vdir)
    cfg_path = vdir / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    model = load_model("sd", str(vdir))
    assert model.prediction_type == "v_prediction"
    x_t, cond = _noisy(model), model.encode_text(["a cat", ""])
    t = torch.tensor([50, 700])
    with torch.no_grad():
        v = model.unet(x_t, t, encoder_hidden_states=cond).sample
    a = model.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(model.denoise(x_t, t, cond), a.sqrt() * v + (1 - a).sqrt() * x_t)


# ---- DiT ----------------------------------------------------------------------------------------------------
def test_dit_loads_and_maps_class_names(dit, dit_dir):
    from difflens.models import adapter_class

    assert dit.kind == "dit" and dit.dtype == torch.float32 and dit.resolution == 16
    assert dit.classes == DIT_CLASSES and dit.null_class == 3
    cond = dit.encode_text(["cat", "Puppy", "dog", "", "2", "BIRD"])
    assert cond.dtype == torch.long and cond.tolist() == [0, 1, 1, 3, 2, 2]
    with pytest.raises(ModelConfigError, match=r"'zebra'.*bird"):
        dit.encode_text(["zebra"])
    assert dit.layers() == ["transformer_blocks.0", "transformer_blocks.1"]
    assert adapter_class("dit").static_layers(str(dit_dir)) == dit.layers()
    with pytest.raises(ModelConfigError, match=r"'bottleneck'.*transformer_blocks.1"):
        dit.canonical_layer("bottleneck")
    # an explicit class list wins over the model card
    other = load_model("dit", str(dit_dir), classes=["x", "y", "z"])
    assert other.encode_text(["y"]).tolist() == [1]


def test_dit_class_names_from_id2label_and_files(dit_dir, tmp_path):
    hub_like = tmp_path / "dit_hub"
    shutil.copytree(dit_dir, hub_like)
    (hub_like / "difflens_model.json").unlink()
    index = json.loads((hub_like / "model_index.json").read_text())
    index["id2label"] = {"0": "tench, Tinca tinca", "1": "goldfish", "2": "great white shark, white shark"}
    (hub_like / "model_index.json").write_text(json.dumps(index))
    model = load_model("dit", str(hub_like))
    assert model.encode_text(["Tinca tinca", "goldfish", "white shark", ""]).tolist() == [0, 1, 2, 3]
    names = tmp_path / "labels.txt"
    names.write_text("ant\nbee\nwasp\n")
    assert load_model("dit", str(hub_like), classes=str(names)).encode_text(["wasp"]).tolist() == [2]
    with pytest.raises(ModelConfigError, match="nope.json"):
        load_model("dit", str(hub_like), classes=str(tmp_path / "nope.json"))
    with pytest.raises(ModelConfigError, match=r"unknown option\(s\) \['colour'\].*resolution"):
        load_model("dit", str(hub_like), colour="red")


def test_dit_warns_when_the_hub_model_index_cannot_be_read(caplog):
    """A hub id whose model_index.json is in no cache, offline: no id2label from it, and a warning naming the source
    and the error."""
    import logging

    from difflens.models.base import model_index

    with caplog.at_level(logging.WARNING, logger="difflens.models.base"):
        assert model_index("nobody/no-such-dit", local_files_only=True) == {}
    [record] = [r for r in caplog.records if r.name == "difflens.models.base"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("nobody/no-such-dit: cannot read model_index.json (OSError: ")


def test_dit_encode_and_denoise_take_the_epsilon_half(dit, dit_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(dit_dir / "vae")
    px = _pixels(dit)
    with torch.no_grad():
        torch.testing.assert_close(dit.encode_images(px), vae.encode(px).latent_dist.mode() * vae.config.scaling_factor)
    x_t, cond = _noisy(dit), dit.encode_text(["cat", ""])
    t = torch.tensor([10, 900])
    with torch.no_grad():
        raw = dit.transformer(x_t, timestep=t, class_labels=cond).sample
    assert raw.shape[1] == 8
    torch.testing.assert_close(dit.denoise(x_t, t, cond), raw[:, :4])


def test_dit_token_map_orientation(dit):
    # synthetic tokens: token i*w + j carries (i, j) in its channels
    h, w, d = 4, 4, 16
    dit._grid = (h, w)
    tokens = torch.zeros(1, h * w, d)
    for i in range(h):
        for j in range(w):
            tokens[0, i * w + j] = torch.arange(d) + 100 * i + 10 * j
    m = dit.layer_output_to_map("transformer_blocks.0", tokens)
    assert m.shape == (1, d, h, w)
    for i in range(h):
        for j in range(w):
            assert torch.equal(m[0, :, i, j], tokens[0, i * w + j])
    assert not torch.equal(m, tokens.view(1, d, h, w))  # what a plain view would (wrongly) give
    # real model: the patch embedding's tokens, minus their position code, are its conv map in place
    pe, seen = dit.transformer.pos_embed, {}
    handles = [pe.register_forward_hook(lambda mod, a, out: seen.__setitem__("tokens", out)),
               pe.proj.register_forward_hook(lambda mod, a, out: seen.__setitem__("conv", out))]
    try:
        dit.denoise(_noisy(dit), 100, dit.encode_text(["cat", "bird"]))
    finally:
        for hd in handles:
            hd.remove()
    torch.testing.assert_close(dit.layer_output_to_map("pos_embed", seen["tokens"] - pe.pos_embed), seen["conv"])


def test_dit_capture_stop_early(dit):
    x_t, cond = _noisy(dit), dit.encode_text(["cat", ""])
    runs = []
    h = dit.transformer.transformer_blocks[1].register_forward_hook(lambda *a: runs.append(1))
    try:
        early = dit.capture(x_t, 300, cond, ["transformer_blocks.0"])
        assert runs == []
        full = dit.capture(x_t, 300, cond, ["transformer_blocks.0"], stop_early=False)
        assert runs == [1]
    finally:
        h.remove()
    assert early["transformer_blocks.0"].shape == (2, 16, 4, 4)
    torch.testing.assert_close(early["transformer_blocks.0"], full["transformer_blocks.0"])


# ---- cross-attention probe ----------------------------------------------------------------------------------
def test_attention_probe_matches_default_processor(sd):
    x_t, cond = _noisy(sd), sd.encode_text(["a red cat", ""])
    originals = {n: m.processor for n, m in cross_attention_modules(sd.unet).items()}
    assert originals and all(n.endswith("attn2") for n in originals)
    ref_eps = sd.denoise(x_t, 400, cond)
    ref_blocks = sd.capture(x_t, 400, cond, ["down_blocks.1", "up_blocks.0"], stop_early=False)
    with record_cross_attention(sd) as rec:
        blocks = sd.capture(x_t, 400, cond, ["down_blocks.1", "up_blocks.0"], stop_early=False)
        assert all(type(m.processor).__name__ == "RecordingAttnProcessor"
                   for m in cross_attention_modules(sd.unet).values())
    for name in ref_blocks:
        torch.testing.assert_close(blocks[name], ref_blocks[name])
    assert {n: m.processor for n, m in cross_attention_modules(sd.unet).items()} == originals  # restored
    torch.testing.assert_close(sd.denoise(x_t, 400, cond), ref_eps)

    assert set(rec.maps) == set(originals) and all(c == 1 for c in rec.calls.values())
    for name, m in rec.maps.items():
        assert m.shape[:2] == (2, MAX_TOKENS)
        torch.testing.assert_close(m.sum(dim=1), torch.ones(2, *m.shape[2:]))  # probabilities over tokens
    sizes = {tuple(m.shape[-2:]) for m in rec.maps.values()}
    assert sizes == {(4, 4)}  # the cross-attention blocks run at half the 8x8 latent size
    heat = aggregate_maps(rec.maps, size=(8, 8))
    assert heat.shape == (2, MAX_TOKENS, 8, 8)
    torch.testing.assert_close(heat.sum(dim=1), torch.ones(2, 8, 8))


def test_attention_probe_token_subset_and_timesteps(sd):
    x_t, cond = _noisy(sd), sd.encode_text(["a red cat", ""])
    idx = word_token_indices(sd.tokenizer, "a red cat", "cat")
    with record_cross_attention(sd) as full:
        sd.denoise(x_t, 400, cond)
    with record_cross_attention(sd, tokens_of_interest=idx) as sub:
        sd.denoise(x_t, 400, cond)
        sd.denoise(x_t, 400, cond)  # a second call (timestep) adds up
    for name, m in sub.maps.items():
        assert sub.calls[name] == 2
        torch.testing.assert_close(m, 2 * full.maps[name][:, idx])
    manual = torch.stack([F.interpolate(m, size=(8, 8), mode="bilinear") for m in sub.maps.values()]).mean(0)
    torch.testing.assert_close(aggregate_maps(sub.maps, size=(8, 8)), manual)


def test_word_token_indices_clip_and_word_level(shapes):
    clip = tiny_clip_tokenizer()
    # [BOS] a</w> r e d</w> c a t</w> ,</w> ...: a word may span several BPE tokens
    assert word_token_indices(clip, "a red cat, sitting.", "cat") == [5, 6, 7]
    assert word_token_indices(clip, "a red cat, sitting.", "red") == [2, 3, 4]
    assert word_token_indices(clip, "a red cat, sitting.", "a") == [1]  # whole words only (not the a of cat)
    assert word_token_indices(clip, "a red cat", "dog") == []
    tok = shapes.tokenizer
    prompt = "a Red circle to the left of a blue square"
    assert word_token_indices(tok, prompt, "red") == [2]
    assert word_token_indices(tok, prompt, "a") == [1, 8]
    assert word_token_indices(tok, prompt, "square") == [10]
    ids = tok(prompt.lower()).input_ids
    assert tok.convert_ids_to_tokens(ids[10]) == "square"


# ---- shapes adapter -----------------------------------------------------------------------------------------
def test_shapes_adapter_path(shapes):
    assert shapes.kind == "shapes" and shapes.resolution == 32 and shapes.dtype == torch.float32
    px = _pixels(shapes)
    lat = shapes.encode_images(px)
    torch.testing.assert_close(lat, F.pixel_unshuffle(px, 2))
    torch.testing.assert_close(shapes.decode_latents(lat), px)
    cond = shapes.encode_text(["A red circle", ""])
    x_t = shapes.add_noise(lat, torch.randn_like(lat), torch.tensor([100, 600]))
    eps = shapes.denoise(x_t, torch.tensor([100, 600]), cond)
    assert eps.shape == lat.shape and eps.dtype == torch.float32
    feats = shapes.capture(x_t, 100, cond, ["bottleneck", "up_ft1"])
    assert feats["bottleneck"].shape[0] == 2 and feats["up_ft1"].dim() == 4
    with record_cross_attention(shapes, word_token_indices(shapes.tokenizer, "A red circle", "circle")) as rec:
        shapes.denoise(x_t, 100, cond)
    heat = aggregate_maps(rec.maps, size=lat.shape[-2:])
    assert heat.shape == (2, 1, 16, 16)


# ---- loading only what a job uses -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "dit", "shapes"])
def test_components_load_only_what_a_job_uses(kind, sd, sd_dir, dit, dit_dir, tmp_path_factory):
    """The latents job loads the image encoder alone, an activation job the denoiser alone; each gives the same
    numbers as the full model, and using a component that was not loaded fails naming it."""
    folder = {"sd": sd_dir, "dit": dit_dir,
              "shapes": build_tiny_shapes(tmp_path_factory.mktemp("models") / "shapes_parts")}[kind]
    full = {"sd": sd, "dit": dit}.get(kind) or load_model(kind, str(folder))
    vae_only = load_model(kind, str(folder), components=["vae"])
    denoiser_only = load_model(kind, str(folder), components=["denoiser"])
    assert vae_only.resolution == denoiser_only.resolution == full.resolution
    weights = {"sd": ("unet", "text_encoder"), "dit": ("transformer",), "shapes": ("unet", "text_encoder")}[kind]
    assert all(getattr(vae_only, w) is None for w in weights)
    if kind != "shapes":
        assert denoiser_only.vae is None
    pixels = _pixels(full)
    torch.testing.assert_close(vae_only.encode_images(pixels), full.encode_images(pixels))

    x_t = _noisy(full)
    empty = full.encode_text([""])
    if kind != "dit":  # a text model without its text encoder takes the stored empty-prompt condition
        with pytest.raises(ModelConfigError, match="without its text"):
            denoiser_only.encode_text([""])
        denoiser_only.set_condition("", empty[0])
    torch.testing.assert_close(denoiser_only.denoise(x_t, 400, denoiser_only.encode_text([""] * 2)),
                               full.denoise(x_t, 400, empty.repeat(2, *[1] * (empty.dim() - 1))))
    with pytest.raises(ModelConfigError, match="without its denoiser"):
        vae_only.denoise(x_t, 400, empty)
    if kind != "shapes":
        with pytest.raises(ModelConfigError, match="without its vae"):
            denoiser_only.encode_images(pixels)
    with pytest.raises(ModelConfigError, match=r"components \['unet'\]"):
        load_model(kind, str(folder), components=["unet"])
