"""A model that its kind's adapter cannot drive is refused before any job: from its configs where a copy is on disk
(a local folder, the model cache, the hub mirror), from the well-known hub ids where none is, and at the latest by
the download job once the configs arrive, before any weights are fetched."""
import copy
import json
from pathlib import Path

import pytest
import yaml

from difflens.config import ConfigError, validate_config
from difflens.models import load_model
from difflens.models.catalog import ModelConfigError, resolve_layer
from difflens.models.fetch import fetch_model
from tiny_families import build_tiny_sdxl
from tiny_pipelines import build_tiny_dit, build_tiny_sd

ROOT = Path(__file__).resolve().parents[1]
SDXL_ID = "tiny-org/tiny-sdxl"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub mirror with a tiny SDXL folder, a tiny SD folder and a tiny DiT folder."""
    root = tmp_path_factory.mktemp("hub")
    build_tiny_sdxl(root / SDXL_ID)
    build_tiny_sd(root / "tiny-org/tiny-sd")
    build_tiny_dit(root / "tiny-org/tiny-dit", ["cat", "dog"])
    return root


def config_with(model: dict, **top) -> dict:
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))
    cfg["models"]["other"] = {"layers": [], "timesteps": [], **model}
    return {**cfg, **top}


def refusal(cfg: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    return str(exc.value)


def test_sdxl_as_kind_sd_is_refused_naming_kind_sdxl_from_a_local_folder_the_cache_or_the_mirror(hub, tmp_path):
    local = refusal(config_with({"kind": "sd", "source": str(hub / SDXL_ID), "layers": ["up_blocks.1"]}))
    mirrored = refusal(config_with({"kind": "sd", "source": SDXL_ID}, hub_mirror=str(hub)))
    cache = tmp_path / "cache"
    (cache / "tiny-org--tiny-sdxl").mkdir(parents=True)
    (cache / "tiny-org--tiny-sdxl/model_index.json").write_text((hub / SDXL_ID / "model_index.json").read_text())
    cached = refusal(config_with({"kind": "sd", "source": SDXL_ID}, model_cache=str(cache)))
    for msg in (local, mirrored, cached):
        assert "config key models.other.kind" in msg and "is a StableDiffusionXLPipeline: set kind: sdxl" in msg
    assert validate_config(config_with({"kind": "sdxl", "source": SDXL_ID, "layers": ["up_ft1"]},
                                       hub_mirror=str(hub)))["models"]["other"]["kind"] == "sdxl"


def test_an_sdxl_unet_without_a_model_index_is_told_apart_by_its_added_conditions(hub, tmp_path):
    folder = tmp_path / "unet-only"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet/config.json").write_text((hub / SDXL_ID / "unet/config.json").read_text())
    msg = refusal(config_with({"kind": "sd", "source": str(folder)}))
    assert "'text_time' added conditions" in msg and "set kind: sdxl" in msg
    sd_unet = tmp_path / "sd-unet"
    (sd_unet / "unet").mkdir(parents=True)
    (sd_unet / "unet/config.json").write_text((hub / "tiny-org/tiny-sd/unet/config.json").read_text())
    msg = refusal(config_with({"kind": "sdxl", "source": str(sd_unet)}))
    assert "takes no SDXL text-and-time conditions" in msg


def test_well_known_hub_ids_are_refused_before_their_configs_are_on_disk():
    msg = refusal(config_with({"kind": "sd", "source": "stabilityai/stable-diffusion-xl-base-1.0"}))
    assert "config key models.other.kind" in msg and "'stabilityai/stable-diffusion-xl-base-1.0'" in msg
    assert "set kind: sdxl" in msg
    msg = refusal(config_with({"kind": "dit", "source": "black-forest-labs/FLUX.1-dev"}))
    assert "is a FluxPipeline: set kind: flux" in msg
    msg = refusal(config_with({"kind": "sdxl", "source": "stabilityai/stable-diffusion-xl-refiner-1.0"}))
    assert "SDXL refiner models are not supported yet" in msg and "kind 'sdxl' drives StableDiffusionXLPipeline" in msg


def test_a_model_of_another_kind_names_the_kind_that_drives_it(hub):
    msg = refusal(config_with({"kind": "sd", "source": str(hub / "tiny-org/tiny-dit")}))
    assert "is a DiTPipeline: set kind: dit" in msg
    msg = refusal(config_with({"kind": "dit", "source": "tiny-org/tiny-sd"}, hub_mirror=str(hub)))
    assert "is a StableDiffusionPipeline: set kind: sd" in msg
    # the right kinds pass, their layers read from the mirror's copy: the tiny SD has two up blocks, not SD's four
    ok = validate_config(config_with({"kind": "sd", "source": "tiny-org/tiny-sd", "layers": ["up_ft1"]},
                                     hub_mirror=str(hub)))
    assert ok["models"]["other"]["kind"] == "sd"
    assert "'up_blocks.3'" in refusal(config_with({"kind": "sd", "source": "tiny-org/tiny-sd",
                                                   "layers": ["up_blocks.3"]}, hub_mirror=str(hub)))


def test_the_download_job_refuses_before_fetching_weights(hub, tmp_path):
    dest = tmp_path / "cache/tiny-org--tiny-sdxl"
    with pytest.raises(ModelConfigError, match=r"model 'xl': config key models.xl.kind: .*StableDiffusionXLPipeline"):
        fetch_model("xl", "sd", SDXL_ID, dest, mirror=hub)
    fetched = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert fetched and all(f.endswith(".json") for f in fetched)  # configs only, no weights
    with pytest.raises(ModelConfigError, match="StableDiffusionXLPipeline"):
        load_model("sd", str(hub / SDXL_ID))


def test_a_sub_module_layer_is_refused_naming_its_block_and_the_docs(hub):
    with pytest.raises(ModelConfigError) as exc:
        resolve_layer("sd", str(hub / "tiny-org/tiny-sd"), "up_blocks.1.attentions.0")
    msg = str(exc.value)
    assert "sub-module of the block 'up_blocks.1'" in msg and "only block outputs" in msg and "docs/models.md" in msg
    assert json.loads((hub / SDXL_ID / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
