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
    assert out["model_cache"] == "model_cache" and out["models"]["shapes"]["dtype"] == "auto"
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
    assert "models.shapes.kind" in msg and "'unet3000'" in msg and "['shapes', 'sd', 'dit', 'sdxl', 'pixart', 'sd3', 'flux']" in msg


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


@pytest.mark.parametrize("params,key,words", [
    ({"image_size": 20}, "datasets.shapes.params.image_size", "multiple of 8"),
    ({"image_size": 8}, "datasets.shapes.params.image_size", "less than the minimum of 16"),
    ({"n_images": 0}, "datasets.shapes.params.n_images", "less than the minimum of 1"),
    ({"p_two_objects": 1.5}, "datasets.shapes.params.p_two_objects", "greater than the maximum of 1"),
    ({"n_image": 10}, "datasets.shapes.params", "'n_image' was unexpected"),
])
def test_shapes_loader_parameters_are_checked_before_any_job(cfg, params, key, words):
    msg = _error(cfg, lambda c: c["datasets"]["shapes"].update(params=params))
    assert f"config key {key}:" in msg and words in msg


def test_imagefolder_parameters_are_checked_before_any_job(cfg, tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "captions.csv").write_text("image,caption\n")

    def folder(**params):
        return lambda c: c["datasets"].update(mine={"source": "imagefolder", "params": params})

    msg = _error(cfg, folder(captions="captions.csv"))
    assert "datasets.mine.params" in msg and "'path' is a required property" in msg
    msg = _error(cfg, folder(path=str(tmp_path / "nowhere")))
    assert "datasets.mine.params.path" in msg and "nowhere" in msg and "is not a folder" in msg
    msg = _error(cfg, folder(path=str(tmp_path), captions="captoins.csv"))
    assert "datasets.mine.params.captions" in msg and "'captoins.csv'" in msg
    msg = _error(cfg, folder(path=str(tmp_path), allow_missing_captions="yes"))
    assert "datasets.mine.params.allow_missing_captions" in msg
    good = copy.deepcopy(cfg)
    folder(path=str(tmp_path), captions="captions.csv", caption_template="a {label}")(good)
    assert validate_config(good)["datasets"]["mine"]["params"]["captions"] == "captions.csv"


def test_shapes_model_has_no_resolution(cfg):
    msg = _error(cfg, lambda c: c["models"]["shapes"].update(resolution=64))
    assert "models.shapes.resolution" in msg and "64" in msg


def test_sd_source_is_a_folder_or_a_hub_id(cfg):
    msg = _error(cfg, lambda c: c["models"].update(sd={"kind": "sd", "source": "not a model"}))
    assert "models.sd.source" in msg and "'not a model'" in msg and "hub id" in msg


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


def test_a_renamed_key_names_its_replacement(cfg):
    msg = _error(cfg, lambda c: c["sae"]["runs"]["shapes"].update(dead_after=20_000))
    assert "sae.runs.shapes.dead_after: renamed; use dead_steps" in msg and "dead_passes" in msg


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


def test_infodecomp_names_conditional_models_and_configured_data_sets(cfg):
    dit = {"kind": "dit", "source": "facebook/DiT-XL-2-256", "layers": ["transformer_blocks.0"]}
    msg = _error(cfg, lambda c: (c["models"].update(dit=dit), c["infodecomp"].update(models=["dit"])))
    assert "infodecomp.aro.datasets: aro reads captions" in msg and "['dit'] are class-conditional" in msg
    msg = _error(cfg, lambda c: (c["models"].update(dit=dit), c["infodecomp"].update(models=["nope"])))
    assert "infodecomp.models" in msg and "'nope' is not configured" in msg
    msg = _error(cfg, lambda c: c["infodecomp"]["localize"].update(datasets=["coco"]))
    assert "infodecomp.localize.datasets" in msg and "'coco'" in msg and "['shapes']" in msg


def test_log_snr_interval_must_stay_in_the_trained_range(cfg):
    # the shapes model's linear schedule spans -10.12 .. 9.21; loc 0 +- 2 x 5.5 does not fit
    msg = _error(cfg, lambda c: c["infodecomp"].update(clip=5.5))
    assert "infodecomp.loc, infodecomp.scale, infodecomp.clip = 0.0, 2.0, 5.5" in msg
    assert "[-11.00, 11.00]" in msg and "-10.12 .. 9.21" in msg and "'shapes'" in msg
    # Stable Diffusion (hub id, no local config: its scaled-linear schedule, -5.36 .. 7.07): loc 1 +- 2 x 3 fits,
    # the default shapes-world interval (-6 .. 6) does not
    sd = {"kind": "sd", "source": "stabilityai/stable-diffusion-2-1-base", "layers": ["bottleneck"]}
    msg = _error(cfg, lambda c: (c["models"].update(sd=sd), c["infodecomp"].update(models=["shapes", "sd"])))
    assert "-5.36 .. 7.07" in msg and "model 'sd'" in msg
    ok = copy.deepcopy(cfg)
    ok["models"]["sd"] = sd
    ok["infodecomp"].update(models=["sd"], loc=1.0)
    validate_config(ok)


def test_nested_command_line_values_arrive_as_text_and_are_read_as_the_schema_asks(cfg):
    """Snakemake reads the nested values of --config key={...} as text (YAML's base loader): numbers, booleans and
    nulls are turned back where the schema asks for them; a string where a number belongs still names the key."""
    cfg["infodecomp"]["aro"] = {"datasets": ["shapes"], "max_items": "12"}
    cfg["extraction"].update(batch_size="8", save_maps="false")
    cfg["infodecomp"]["scale"] = "1.5"
    out = validate_config(cfg)
    assert out["infodecomp"]["aro"]["max_items"] == 12 and out["extraction"]["batch_size"] == 8
    assert out["extraction"]["save_maps"] is False and out["infodecomp"]["scale"] == 1.5
    assert out["extraction"]["prompt"] == ""  # strings stay strings
    msg = _error(cfg, lambda c: c["extraction"].update(batch_size="eight"))
    assert "config key extraction.batch_size" in msg and "'eight'" in msg


def test_cosine_t_max_without_the_cosine_schedule_is_refused_before_any_job(cfg):
    msg = _error(cfg, lambda c: c["classify"].update(lr_t_max=90))
    assert "classify.lr_t_max: 90" in msg and "lr_schedule is 'constant'" in msg
    good = copy.deepcopy(cfg)
    good["classify"].update(lr_t_max=90, lr_schedule="cosine")
    assert validate_config(good)["classify"]["lr_t_max"] == 90


def test_sae_sigma_names_its_definitions(cfg):
    msg = _error(cfg, lambda c: c["sae"].update(sigma="dense"))
    assert "sae.sigma" in msg and "public_code" in msg


def test_steering_targets_name_an_sae_the_sae_section_trains(cfg):
    target = lambda c: c["steer"]["targets"][0]  # noqa: E731
    msg = _error(cfg, lambda c: target(c).update(layer="down_blocks.0"))
    assert "steer.targets[0].layer" in msg and "'down_blocks.0'" in msg and "up_blocks.1" in msg
    msg = _error(cfg, lambda c: target(c).update(run="paper"))
    assert "steer.targets[0].run" in msg and "['shapes']" in msg
    msg = _error(cfg, lambda c: target(c).update(timestep=500))
    assert "steer.targets[0].timestep" in msg and "[25, 250, 900]" in msg
    msg = _error(cfg, lambda c: target(c).update(model="sd"))
    assert "steer.targets[0].model" in msg
    msg = _error(cfg, lambda c: c["steer"].update(guidance=3.0))
    assert "steer.guidance" in msg and "prompt: caption" in msg
    msg = _error(cfg, lambda c: c["steer"].update(t_range=[900, 100]))
    assert "steer.t_range" in msg
    msg = _error(cfg, lambda c: c["steer"].update(edits=["clamp"], clamp_quantiles=[]))
    assert "steer.clamp_quantiles" in msg
