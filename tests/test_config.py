"""Config validation: defaults filled in, and every bad config fails with one message naming key and choices."""
import copy
from pathlib import Path

import pytest
import yaml

from difflens.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults(cfg):
    out = validate_config(cfg)
    assert out["extraction"]["batch_size"] == 64
    assert out["sae"]["k"] == 32 and out["models"]["shapes"]["dtype"] == "auto"
    assert out["models"]["shapes"]["train"]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("config_file", sorted((ROOT / "configs").glob("*.yaml")))
def test_paper_configs_are_valid(config_file):
    assert load_config(config_file)["models"]


def _error(cfg, mutate) -> str:
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(ConfigError) as exc:
        validate_config(bad)
    return str(exc.value)


def test_unknown_model_kind(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(kind="unet3000"))
    assert "models.shapes.kind" in msg and "'unet3000'" in msg and "['shapes', 'sd', 'dit']" in msg


def test_unknown_layer_for_that_model(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(layers=["up_ft1", "up_blocks.7"]))
    assert "models.shapes.layers" in msg and "'up_blocks.7'" in msg and "up_blocks.2" in msg
    # a DiT has no UNet aliases
    msg = _error(cfg, lambda c: c["models"].update(dit={"kind": "dit", "source": "facebook/DiT-XL-2-512",
                                                         "layers": ["bottleneck"]}))
    assert "models.dit.layers" in msg and "transformer_blocks.27" in msg


def test_timestep_outside_scheduler_range(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(timesteps=[25, 1000]))
    assert "models.shapes.timesteps" in msg and "1000" in msg and "0..999" in msg


def test_k_larger_than_latents(cfg):
    msg = _error(cfg, lambda c: c.update(sae={"k": 64, "n_latents": 32}))
    assert "sae.k" in msg and "64" in msg and "1..32" in msg


def test_dataset_without_loader(cfg):
    msg = _error(cfg, lambda c: c["datasets"].update(imagenet={"source": "imagenet"}))
    assert "datasets.imagenet.source" in msg and "'imagenet'" in msg and "pets" in msg and "shapes" in msg


def test_schema_errors_name_the_key(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(dtype="float8"))
    assert "models.shapes.dtype" in msg and "float8" in msg and "bfloat16" in msg
    msg = _error(cfg, lambda c: c["extraction"].update(batch_size=0) if "extraction" in c
                 else c.update(extraction={"batch_size": 0}))
    assert "extraction.batch_size" in msg
    msg = _error(cfg, lambda c: c.update(sea={"k": 3}))
    assert "sea" in msg


def test_references_between_sections(cfg):
    msg = _error(cfg, lambda c: c.update(extraction={"datasets": ["pets"]}))
    assert "extraction.datasets" in msg and "'pets'" in msg
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(retrain=True, train={"dataset": "nope"}))
    assert "models.shapes.train.dataset" in msg
    msg = _error(cfg, lambda c: c["models"].update(sd={"kind": "sd", "source": "x/y", "retrain": True}))
    assert "models.sd.retrain" in msg


def test_shapes_model_needs_one_attention_flag_per_level(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(train={"cross_attention": [True, False]}))
    assert "models.shapes.train.cross_attention" in msg and "3" in msg and "got 2" in msg


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_job_device_follows_the_gpu_resource():
    """A job that Snakemake gave gpu=0 (profile `gpu: 0`) runs on the CPU; otherwise the model layer chooses."""
    from types import SimpleNamespace

    from difflens.runlog import job_device

    assert job_device(SimpleNamespace(gpu=0)) == "cpu" and job_device({"gpu": 0}) == "cpu"
    assert job_device(SimpleNamespace(gpu=1)) is None and job_device(SimpleNamespace()) is None
