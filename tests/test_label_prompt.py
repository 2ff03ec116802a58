"""A class-name prompt leaks the label (extraction.prompt with {label}: refused for classified features unless
classify.allow_label_prompt), and its alternative, extraction.prompt: clip (a prompt per image from the class name a
CLIP model picks zero-shot), on a tiny random CLIP, a tiny shapes model and a small shapes world."""
from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from difflens.config import ConfigError, load_config, validate_config
from difflens.data.common import Dataset
from difflens.extract.capture import capture_rows
from difflens.extract.clip_prompts import ClipPromptChooser, choose_prompts, load_clip
from difflens.extract.dataset import extract_dataset
from difflens.extract.layout import activation_path
from difflens.extract.prompts import (CHOSEN_COLUMNS, PromptError, format_prompt, read_chosen, row_prompts,
                                      write_chosen)
from difflens.extract.store import FeatureStore
from test_extraction import load_tiny
from test_invariance import dataset, world  # noqa: F401 (the tiny world and its data set, module fixtures)
from tiny_pipelines import build_tiny_clip, tiny_clip_tokenizer
from workflows.runs import ROOT, run, snakemake_cmd, write_config


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def config_error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_config(copy.deepcopy(cfg))
    return str(exc.value)


# ---- the label prompt is refused where a classifier reads the features ---------------------------------------------
def test_a_class_name_prompt_is_refused_for_classified_features(cfg):
    cfg["extraction"]["prompt"] = "a photo of a {label}"
    msg = config_error(cfg)
    assert msg.startswith("config key extraction.prompt: 'a photo of a {label}'")
    assert "label leakage" in msg and "classify.allow_label_prompt: true" in msg and "['shapes']" in msg
    assert "prompt: clip" in msg
    cfg["classify"]["allow_label_prompt"] = True  # a deliberate test of the label prompt
    assert validate_config(copy.deepcopy(cfg))["extraction"]["prompt"] == "a photo of a {label}"


def test_prompts_that_do_not_name_the_class_pass(cfg):
    for prompt in ("", "a photo of a shape", "clip"):
        cfg["extraction"]["prompt"] = prompt
        cfg["extraction"]["prompt_clip"] = {"source": "org/some-clip"}
        assert validate_config(copy.deepcopy(cfg))["classify"]["allow_label_prompt"] is False
    # no extraction data set, so no classified features: a label prompt leaks into nothing that is scored
    cfg["extraction"].update(prompt="{label}", datasets=[])
    cfg["pca"]["views"] = []
    cfg["steer"]["targets"] = []
    validate_config(copy.deepcopy(cfg))


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_default_and_paper_configs_do_not_leak_the_label(path):
    cfg = load_config(path)
    assert "{label}" not in cfg["extraction"]["prompt"] and cfg["classify"]["allow_label_prompt"] is False


def test_clip_prompt_settings_are_checked(cfg):
    cfg["extraction"]["prompt"] = "clip"
    assert "config key extraction.prompt_clip.source" in config_error(cfg)  # no CLIP anywhere
    cfg["classify"]["baselines"] = [{"name": "dino", "source": "facebook/dinov2-base"},
                                    {"name": "vit_l", "source": "openai/clip-vit-large-patch14"}]
    got = validate_config(copy.deepcopy(cfg))["extraction"]["prompt_clip"]
    assert got == {"source": "openai/clip-vit-large-patch14", "template": "a photo of a {label}",
                   "dataset_templates": {}}  # the baseline CLIP, not the first baseline
    cfg["extraction"]["prompt_clip"] = {"source": "org/own-clip", "template": "a photo"}
    assert "config key extraction.prompt_clip.template: 'a photo' has no {label}" in config_error(cfg)
    cfg["extraction"]["prompt_clip"] = {"source": "org/own-clip", "dataset_templates": {"pets": "a {label}"}}
    assert "extraction.prompt_clip.dataset_templates: 'pets' is not an extraction data set" in config_error(cfg)
    cfg["extraction"]["prompt_clip"] = {"source": "not a model"}
    assert "extraction.prompt_clip.source: 'not a model' is neither a local folder nor a hub id" in config_error(cfg)


# ---- prompts of rows ------------------------------------------------------------------------------------------------
def test_row_prompts_of_a_template_and_of_chosen_prompts(tmp_path):
    assert row_prompts("a {label}", ["s0", "s1"], ["cat", "dog"]) == ["a cat", "a dog"]
    chosen = {"s0": "a dog", "s1": "a dog"}
    assert row_prompts("clip", ["s1", "s0"], ["dog", "cat"], chosen) == ["a dog", "a dog"]
    with pytest.raises(PromptError, match="no chosen prompt for 1 sample ids, e.g. \\['s2'\\]"):
        row_prompts("clip", ["s0", "s2"], ["cat", "cat"], chosen)
    with pytest.raises(PromptError, match="none were given"):
        row_prompts("clip", ["s0"], ["cat"])
    with pytest.raises(PromptError, match="CLIP's choice, not a template"):
        format_prompt("clip", "cat")  # never the literal prompt "clip"
    write_chosen([{"sample_id": s, "class_name": p[2:], "prompt": p, "similarity": 0.5} for s, p in chosen.items()],
                 tmp_path / "c.csv")
    assert read_chosen(tmp_path / "c.csv") == chosen
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == ",".join(CHOSEN_COLUMNS)


# ---- CLIP's choice ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """The tests' tiny random CLIP with a tokenizer (the character-level one of the tiny pipelines); of its seeds, 3
    picks more than one class name for the 40 images of the tiny world (the others mostly one for all)."""
    out = build_tiny_clip(tmp_path_factory.mktemp("prompt-clip") / "clip", seed=3)
    tiny_clip_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chosen_rows(clip_dir, dataset):
    processor, model = load_clip(str(clip_dir))
    return choose_prompts(ClipPromptChooser(processor, model, dataset.classes, "{label}"), dataset, batch_size=7,
                          progress=False)


def test_clip_picks_each_prompt_from_the_class_names_as_a_direct_argmax(clip_dir, dataset, chosen_rows):
    """Every image gets the template filled with one class name: the one whose prompt's projected CLIP text embedding
    has the highest cosine similarity with the image's projected embedding, computed here tower by tower."""
    from transformers import AutoProcessor, CLIPModel

    processor, model = AutoProcessor.from_pretrained(clip_dir), CLIPModel.from_pretrained(clip_dir).eval()
    names = dataset.classes
    with torch.no_grad():
        tokens = processor.tokenizer(names, padding=True, truncation=True, max_length=16, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        images = [dataset.load_image(s) for s in dataset.samples["sample_id"]]
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    sims = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    best = sims.argmax(1).numpy()
    assert [r["sample_id"] for r in chosen_rows] == list(dataset.samples["sample_id"])
    assert [r["prompt"] for r in chosen_rows] == [names[b] for b in best]
    assert [r["class_name"] for r in chosen_rows] == [names[b] for b in best]
    np.testing.assert_allclose([r["similarity"] for r in chosen_rows], sims.max(1).values.numpy(), atol=2e-6)
    assert len({r["prompt"] for r in chosen_rows}) > 1  # a test the same prompt for every image would not pass


def test_clip_choice_is_deterministic_and_never_reads_the_label(clip_dir, dataset, chosen_rows):
    relabelled = copy.copy(dataset)
    relabelled.samples = dataset.samples.assign(label_name=dataset.samples["label_name"][::-1].to_numpy(),
                                                label=dataset.samples["label"][::-1].to_numpy())
    processor, model = load_clip(str(clip_dir))
    again = choose_prompts(ClipPromptChooser(processor, model, dataset.classes, "{label}"), relabelled,
                           batch_size=40, progress=False)
    assert again == chosen_rows  # same images, other labels and batches: the same choices
    chooser = ClipPromptChooser(processor, model, dataset.classes, "a photo of a {label}")
    assert chooser.prompts == [f"a photo of a {c}" for c in dataset.classes]


def test_a_model_without_a_text_tower_is_named(tmp_path):
    from tiny_pipelines import build_tiny_dinov2

    with pytest.raises(ValueError, match="config key extraction.prompt_clip.source: .* could not be loaded|"
                                         "is not a CLIP-like model"):
        load_clip(str(build_tiny_dinov2(tmp_path / "dino")))


# ---- the chosen prompts condition the extraction and are stored with each row -------------------------------------
def test_extraction_with_clip_prompts_records_and_uses_each_images_prompt(tmp_path, world, dataset, chosen_rows):
    model = load_tiny(str(world["model"]))
    chosen = {r["sample_id"]: r["prompt"] for r in chosen_rows}
    extract_dataset(model, dataset, tmp_path, "tiny", layers=["mid_block"], timesteps=[25], shard_size=40,
                    batch_size=16, seed=3, prompt="clip", chosen=chosen, workers=1, progress=False)
    store = FeatureStore(tmp_path)
    assert store.prompts("tiny", "shapes", "mid_block", 25) == chosen
    with h5py.File(activation_path(tmp_path, "tiny", "shapes", 25, "mid_block", 0), "r") as f:
        assert f.attrs["prompt"] == "clip"
    # two images' features, computed directly with their chosen prompts' conditions
    feats = store.pooled("tiny", "shapes", "mid_block", 25)
    lat = next(store.iter_latents("tiny", "shapes", batch_size=2))
    ids = list(lat.sample_id)
    cond = model.encode_text([chosen[s] for s in ids])
    want = capture_rows(model, torch.as_tensor(lat.x), ids, cond, [25], 1, ["mid_block"], 3, False)["mid_block"]
    got = feats.x[[list(feats.sample_id).index(s) for s in ids]]
    np.testing.assert_allclose(got, want.pooled[0].numpy(), rtol=1e-4, atol=1e-5)
    other = next(c for c in dataset.classes if c not in {chosen[s] for s in ids})  # another prompt, other features
    moved = capture_rows(model, torch.as_tensor(lat.x), ids, model.encode_text([other] * 2), [25], 1, ["mid_block"],
                         3, False)["mid_block"]
    assert not np.allclose(got, moved.pooled[0].numpy(), rtol=1e-4, atol=1e-5)


# ---- the workflow --------------------------------------------------------------------------------------------------
def small_config(tmp: Path, **extraction) -> dict:
    return {"results": str(tmp / "results"),
            "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 24, "image_size": 32}}},
            "models": {"shapes": {"kind": "shapes", "source": "resources/shapes_model", "dtype": "float32",
                                  "layers": ["mid_block"], "timesteps": [25]}},
            "extraction": {"datasets": ["shapes"], "batch_size": 8, **extraction},
            "classify": {"targets": []}, "pca": {"views": []},
            "steer": {"targets": []}}


def test_a_label_prompt_stops_the_workflow_before_any_job(tmp_path):
    path = write_config(tmp_path, small_config(tmp_path, prompt="{label}"))
    proc = run(snakemake_cmd([], path, "-n", "--replace-workflow-config"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not (tmp_path / "results").exists()
    assert "invalid config: config key extraction.prompt: '{label}'" in out
    assert "label leakage" in out and "classify.allow_label_prompt" in out


def test_the_workflow_chooses_clip_prompts_for_a_data_set(tmp_path, clip_dir):
    """Rule choose_clip_prompts on a local CLIP folder: one prompt per image, from the class names, as the library
    gives it (the activation jobs' use of the table: test_extraction_with_clip_prompts_records_and_uses_each_images_
    prompt; a whole run to the activations costs about 20 s more)."""
    cfg = small_config(tmp_path, prompt="clip", prompt_clip={"source": str(clip_dir), "template": "a {label}"})
    table = tmp_path / "results" / "prompts" / "shapes" / "clip_prompts.csv"
    run(snakemake_cmd([table], write_config(tmp_path, cfg), "--cores", "2", "--replace-workflow-config"),
        env={"HF_HUB_OFFLINE": "1"})
    data = Dataset.load(tmp_path / "results" / "data" / "shapes")
    processor, model = load_clip(str(clip_dir))
    want = choose_prompts(ClipPromptChooser(processor, model, data.classes, "a {label}"), data, progress=False)
    assert read_chosen(table) == {r["sample_id"]: r["prompt"] for r in want}
    assert set(read_chosen(table).values()) <= {f"a {c}" for c in data.classes}
    log = (tmp_path / "results" / "logs" / "choose_clip_prompts" / "shapes.log").read_text()
    assert f"24 of 24 images given a prompt by {clip_dir} from 12 class prompts (template 'a {{label}}')" in log
