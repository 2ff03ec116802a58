"""The shapes model: tokenizer, architecture, resumable seeded training, and the science of the shipped checkpoint."""
import json
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflens.data.shapes import (ShapesConfig, caption_of, choice_prompts, generate, heldout_scenes, render,
                                  vocabulary)
from difflens.models import load_model
from difflens.models.shapes_arch import ShapesArch, block_types, build_model, build_tokenizer, save_model, tokenize
from difflens.train.shapes import TrainConfig, _lr_at, diffusion_loss, draw_timesteps, train

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "resources" / "shapes_model"
TINY = ShapesArch(block_out_channels=(16, 32, 32), text_width=32)


def test_word_level_tokenizer():
    tok = build_tokenizer(vocabulary(), 16)
    ids = tokenize(tok, ["a red circle above a blue square", "", "a purple circle"])
    words = tok.convert_ids_to_tokens(ids[0].tolist())
    assert words[:9] == ["[BOS]", "a", "red", "circle", "above", "a", "blue", "square", "[EOS]"]
    assert words[9:] == ["[PAD]"] * 7
    assert tok.convert_ids_to_tokens(ids[1, :3].tolist()) == ["[BOS]", "[EOS]", "[PAD]"]
    assert tok.convert_ids_to_tokens(ids[2, 2:3].tolist()) == ["[UNK]"]


def test_default_architecture_size():
    _, text, unet, sched = build_model(vocabulary(), ShapesArch(), 0)
    n = sum(p.numel() for p in unet.parameters())  # README: "1.69M parameters"
    assert n == 1_692_268 and unet.config.in_channels == 12 and unet.config.sample_size == 16
    assert [type(b).__name__ for b in unet.down_blocks] == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2
    assert unet.config.addition_embed_type is None and not hasattr(unet, "add_embedding")
    _, _, pooled, _ = build_model(vocabulary(), ShapesArch(text_time_embedding=True), 0)
    assert pooled.config.addition_embed_type == "text" and hasattr(pooled, "add_embedding")
    assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_embedding_std_sets_the_text_tables(std):
    tok, text, _, _ = build_model(vocabulary(), ShapesArch(embedding_std=std), 0)
    for table in (text.embeddings.token_embedding, text.embeddings.position_embedding):
        assert float(table.weight.detach().std()) == pytest.approx(std, rel=0.1)
    with torch.no_grad():
        states = text(tokenize(tok, ["a red circle above a blue square", "a green circle above a blue square"]))[0]
    moved = (states[0] - states[1]).abs().mean(-1)
    assert moved[:2].max() == 0 and moved[2] > 0  # causal: [BOS] and "a" are unchanged, "red" -> "green" is not


def test_uniform_noise_levels_are_uniform_timesteps():
    _, _, _, sched = build_model(vocabulary(), TINY, 0)
    drawn = draw_timesteps(sched, 500, torch.Generator().manual_seed(3), {"distribution": "uniform"})
    assert torch.equal(drawn, torch.randint(0, 1000, (500,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("loc,scale", [(0.0, 2.0), (1.0, 1.0)])
def test_logistic_noise_levels_follow_their_log_snr(loc, scale):
    """The timesteps' log-SNRs have the logistic's median (loc) and quartiles (loc -+ scale ln 3)."""
    _, _, _, sched = build_model(vocabulary(), TINY, 0)
    t = draw_timesteps(sched, 20000, torch.Generator().manual_seed(0),
                       {"distribution": "logistic", "loc": loc, "scale": scale})
    abar = sched.alphas_cumprod[t].double()
    q = torch.quantile(torch.log(abar / (1 - abar)), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    expected = torch.tensor([loc - scale * np.log(3), loc, loc + scale * np.log(3)], dtype=torch.float64)
    assert torch.allclose(q, expected, atol=0.1), (q, expected)
    assert t.min() >= 0 and t.max() <= 999


@pytest.mark.parametrize("levels,message", [({"distribution": "beta"}, "distribution"),
                                            ({"distribution": "logistic", "scale": 0}, "scale")])
def test_bad_noise_levels_are_refused(levels, message):
    with pytest.raises(ValueError, match=f"noise_levels.{message}"):
        TrainConfig(noise_levels=levels)


def _oracle(x0, scheduler, target):
    """A stand-in UNet that returns the exact epsilon or v of ``x_t`` (it knows the clean ``x0``)."""
    def unet(x_t, t, encoder_hidden_states):
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        out = (x_t - a.sqrt() * x0) if target == "epsilon" else (a.sqrt() * x_t - x0)
        return SimpleNamespace(sample=out / (1 - a).sqrt())
    return unet


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_loss_targets_the_prediction_type(prediction_type):
    _, _, _, sched = build_model(vocabulary(), ShapesArch(prediction_type=prediction_type), 0)
    x0 = torch.rand(6, 12, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = {target: float(diffusion_loss(_oracle(x0, sched, target), lambda ids: (None,), sched, x0, None,
                                           torch.Generator().manual_seed(2)))
              for target in ("epsilon", "v_prediction")}
    other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
    assert losses[prediction_type] < 1e-8 and losses[other] > 0.01, losses


def test_v_prediction_model_denoises_to_epsilon(tmp_path):
    """The model layer reads the saved scheduler's prediction type: eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
    tok, text, unet, sched = build_model(vocabulary(), ShapesArch(block_out_channels=(16, 32, 32), text_width=32,
                                                                  prediction_type="v_prediction"), 0)
    save_model(tmp_path / "m", tok, text, unet, sched, {"kind": "shapes", "train_config": {"arch": asdict(
        ShapesArch(prediction_type="v_prediction"))}})
    model = load_model("shapes", str(tmp_path / "m"))
    assert model.prediction_type == "v_prediction"
    x_t = torch.randn(2, 12, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    cond = model.encode_text(["a red circle", ""])
    with torch.no_grad():
        v = model.unet(x_t, t, encoder_hidden_states=cond).sample
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(model.denoise(x_t, t, cond), a.sqrt() * v + (1 - a).sqrt() * x_t)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ShapesArch(prediction_type="sample")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate(root, ShapesConfig(n_images=40), progress=False)
    return root


@pytest.mark.parametrize("kind", ["relation", "attribute"])
def test_choice_prompts_are_the_aro_rows_of_held_out_scenes(tiny_world, kind):
    from difflens.data.common import Dataset

    scenes = heldout_scenes(3, ShapesConfig(n_images=40))
    aro = Dataset.load(tiny_world).aro.set_index(["sample_id", "kind"])
    expected = [[aro.loc[(f"shapes-{i:06d}", kind), "caption"],
                 json.loads(aro.loc[(f"shapes-{i:06d}", kind), "negatives"])[0]] for i, _ in scenes]
    assert len(scenes) == 3 and choice_prompts(scenes, kind) == expected
    assert all(true != negative for true, negative in expected)


def _weights(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(Path(folder) / "unet").state_dict()


def test_training_is_seeded_and_resumes_exactly(tiny_world, tmp_path):
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, arch=TINY, seed=7,
                      noise_levels={"distribution": "logistic", "loc": 0.0, "scale": 2.0})
    train(tiny_world, tmp_path / "straight", cfg)
    # interrupted after 2 steps (checkpoint), then resumed to 4
    train(tiny_world, tmp_path / "half", TrainConfig(**{**asdict(cfg), "steps": 2, "arch": TINY}),
          work_dir=tmp_path / "work")
    other = TrainConfig(**{**asdict(cfg), "arch": ShapesArch(block_out_channels=(16, 32, 32), text_width=32,
                                                                   text_time_embedding=True)})
    with pytest.raises(ValueError, match="another architecture"):
        train(tiny_world, tmp_path / "other", other, work_dir=tmp_path / "work")
    summary = train(tiny_world, tmp_path / "resumed", cfg, work_dir=tmp_path / "work")
    assert summary["train_seconds_this_run"] >= 0 and len(summary["loss_every_50"]) == 1
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    card = json.loads((tmp_path / "resumed" / "difflens_model.json").read_text())
    assert card["kind"] == "shapes" and card["training"]["steps"] == 4
    model = load_model("shapes", str(tmp_path / "resumed"))
    assert model.layers() == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
                              "up_blocks.1", "up_blocks.2"]


def test_lr_schedule_is_the_shipped_closed_form_not_diffusers_warmup():
    """The hand-written schedule is the closed form the shipped checkpoint trained with; diffusers'
    get_cosine_schedule_with_warmup starts its warm-up at 0, one step behind, and equals it after the warm-up."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    recorded = json.loads((SHIPPED / "difflens_model.json").read_text())["train_config"]
    cfg = TrainConfig(**{k: recorded[k] for k in ("steps", "lr", "warmup_steps")})
    lr, warmup, steps = cfg.lr, cfg.warmup_steps, cfg.steps
    ours = [_lr_at(s, cfg) for s in range(steps)]
    for s, got in enumerate(ours):
        closed = lr * (s + 1) / warmup if s < warmup else \
            lr * 0.5 * (1 + math.cos(math.pi * ((s - warmup) / (steps - warmup))))
        assert got == closed, s
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    schedule = get_cosine_schedule_with_warmup(opt, warmup, steps)
    library = []
    for _ in range(steps):
        library.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert library[0] == 0.0 and ours[0] == lr / warmup
    assert library[1:warmup] == pytest.approx(ours[:warmup - 1], rel=1e-12)  # one step behind in the warm-up
    assert library[warmup - 1] < lr == ours[warmup - 1]
    assert library[warmup:] == ours[warmup:]  # equal, bit for bit, from the end of the warm-up on


def test_block_types_follow_the_attention_flags():
    down, up = block_types([False, True, True])
    assert down == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert up == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def test_training_rejects_mismatched_image_size(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="images are 32 px but the model's image_size is 64"):
        train(tiny_world, tmp_path / "m", TrainConfig(steps=1, arch=ShapesArch(image_size=64)))


# ---- the shipped checkpoint --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    assert (SHIPPED / "difflens_model.json").is_file(), f"the shipped shapes model is missing under {SHIPPED}"
    return load_model("shapes", str(SHIPPED))


def test_shipped_model_uses_its_caption(shipped):
    """Held-out denoising error at mid noise: the true caption < the empty prompt < another image's caption."""
    scenes = heldout_scenes(64)
    pixels = torch.from_numpy(np.stack([render(s, 32)[0] for _, s in scenes])).permute(0, 3, 1, 2) / 127.5 - 1
    x0 = shipped.encode_images(pixels)
    caps = [caption_of(s) for _, s in scenes]
    gen = torch.Generator().manual_seed(0)
    errs = {"true": 0.0, "empty": 0.0, "other": 0.0}
    for t in (200, 400, 600):
        eps = torch.randn(x0.shape, generator=gen)
        x_t = shipped.add_noise(x0, eps, torch.full((len(x0),), t))
        for name, prompts in (("true", caps), ("empty", [""] * len(caps)), ("other", caps[7:] + caps[:7])):
            pred = shipped.denoise(x_t, t, shipped.encode_text(prompts))
            errs[name] += float(((pred - eps) ** 2).mean())
    assert errs["true"] < errs["empty"] < errs["other"], errs


def test_shipped_model_card_records_its_training():
    """The shipped checkpoint is what the train_shapes_model rule makes from the default config."""
    import yaml

    from difflens.config import validate_config

    card = json.loads((SHIPPED / "difflens_model.json").read_text())
    train_cfg = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))["models"]["shapes"]["train"]
    recorded, arch = card["train_config"], card["train_config"]["arch"]
    for key in ("steps", "batch_size", "lr", "p_uncond"):
        assert recorded[key] == pytest.approx(train_cfg[key]), key
    # cards written before the noise_levels key trained on uniform timesteps; loc and scale only shape the logistic
    levels, wanted = recorded.get("noise_levels", {"distribution": "uniform"}), train_cfg["noise_levels"]
    assert levels["distribution"] == wanted["distribution"]
    if wanted["distribution"] == "logistic":
        assert (levels["loc"], levels["scale"]) == pytest.approx((wanted["loc"], wanted["scale"]))
    assert arch["block_out_channels"] == train_cfg["block_out_channels"]
    assert arch["space_to_depth"] == train_cfg["space_to_depth"] and arch["text_width"] == train_cfg["text_width"]
    assert arch["text_time_embedding"] == train_cfg["text_time_embedding"]
    assert arch["embedding_std"] == pytest.approx(train_cfg["embedding_std"])
    assert arch.get("prediction_type", "epsilon") == train_cfg["prediction_type"]  # older cards predicted epsilon
    assert [arch["down_block_types"], arch["up_block_types"]] == list(map(list, block_types(
        train_cfg["cross_attention"])))
    assert card["training"]["n_train_images"] == 8000
    losses = card["training"]["loss_every_50"]
    assert len(losses) == -(-train_cfg["steps"] // 50) and losses[-1] < 0.5 * losses[0]
