"""The shapes model: tokenizer, architecture, resumable seeded training, and the science of the shipped checkpoint."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from difflens.data.common import Dataset, seeded_splits
from difflens.data.shapes import ShapesConfig, caption_of, generate, negatives_of, render, sample_scene, vocabulary
from difflens.infodecomp import LogSNRSampler, information_scores
from difflens.models import load_model
from difflens.shapes_model import ShapesArch, TrainConfig, build_model, build_tokenizer, tokenize, train

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
    n = sum(p.numel() for p in unet.parameters())
    assert 1.5e6 < n < 2.0e6 and unet.config.in_channels == 12 and unet.config.sample_size == 16
    assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "epsilon"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate(root, ShapesConfig(n_images=40), progress=False)
    return root


def _weights(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(Path(folder) / "unet").state_dict()


def test_training_is_seeded_and_resumes_exactly(tiny_world, tmp_path):
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, arch=TINY, seed=7)
    train(tiny_world, tmp_path / "straight", cfg)
    # interrupted after 2 steps (checkpoint), then resumed to 4
    train(tiny_world, tmp_path / "half", TrainConfig(**{**asdict(cfg), "steps": 2, "arch": TINY}),
          work_dir=tmp_path / "work")
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


def test_training_rejects_mismatched_image_size(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="images are 32 px but the model's image_size is 64"):
        train(tiny_world, tmp_path / "m", TrainConfig(steps=1, arch=ShapesArch(image_size=64)))


# ---- the shipped checkpoint --------------------------------------------------------------------------------


def heldout_scenes(n: int):
    """The first n test-split scenes with two objects of the default world (seed 0, 10000 images)."""
    cfg = ShapesConfig()
    splits = seeded_splits(cfg.n_images, cfg.seed, cfg.split_fractions)
    out = []
    for i, split in enumerate(splits):
        if split == "test":
            scene = sample_scene(cfg.seed, i, cfg)
            if scene["relation"]:
                out.append((i, scene))
        if len(out) == n:
            return out


@pytest.fixture(scope="module")
def shipped():
    assert (SHIPPED / "difflens_model.json").is_file(), f"the shipped shapes model is missing under {SHIPPED}"
    return load_model("shapes", str(SHIPPED))


# The shipped checkpoint (2,000 CPU steps, see the model card) has not reached the issue's bar of >= 0.9: measured
# 0.53 (relation) and 0.60 (attribute) on 100 held-out images with 32 draws. strict=True turns a pass into a
# failure, so the marker must go when a better checkpoint is shipped.
@pytest.mark.xfail(strict=True, reason="shipped shapes model does not yet carry captions well enough (issue 2)")
@pytest.mark.parametrize("kind", ["relation", "attribute"])
def test_shipped_model_prefers_the_true_caption(shipped, kind):
    scenes = heldout_scenes(24)
    pixels = torch.from_numpy(np.stack([render(s, 32)[0] for _, s in scenes])).permute(0, 3, 1, 2) / 127.5 - 1
    latents = shipped.encode_images(pixels)
    prompts = []
    for i, scene in scenes:
        row = next(r for r in negatives_of(scene, np.random.default_rng([0, i, 1])) if r["kind"] == kind)
        prompts.append([caption_of(scene), json.loads(row["negatives"])[0]])
    sc = information_scores(shipped, latents, prompts, n_draws=16, sampler=LogSNRSampler(0.0, 2.0, 3.0),
                            sample_keys=[i for i, _ in scenes])
    accuracy = float(np.mean(sc.i_s[:, 0] > sc.i_s[:, 1]))
    assert accuracy >= 0.9, f"i^s picked the true caption over the {kind} swap on only {accuracy:.2f}"


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
    card = json.loads((SHIPPED / "difflens_model.json").read_text())
    assert card["train_config"]["steps"] == 2000 and card["training"]["n_train_images"] == 8000
    losses = card["training"]["loss_every_50"]
    assert losses[-1] < 0.5 * losses[0]
