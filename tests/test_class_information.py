"""Information decomposition of a class-conditional DiT: the null class is its unconditional branch, so a class
label's pixel-wise MI is defined and localized against the mask of the object the label names; the text tasks
(ARO, word maps, interventions, MMSE curves under a caption) are refused by name."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_shapes_world
from difflens.config import ConfigError, info_models, validate_config
from difflens.info.estimators import LogSNRSampler, require_text
from difflens.info.inputs import word_rows
from difflens.info.localize import compute_maps
from difflens.info.localize_shards import localize_rows
from difflens.models import load_model
from difflens.models.catalog import ModelConfigError
from tiny_pipelines import build_tiny_dit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_shapes_world(tmp_path_factory, "class-world", 12)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    from difflens.data.shapes import CLASSES

    folder = build_tiny_dit(tmp_path_factory.mktemp("dit") / "tiny-dit", CLASSES)
    return load_model("dit", str(folder), dtype="float32", device="cpu")


def test_class_rows_name_the_labelled_object(world):
    loc = {"split": "test", "calibration_split": "val", "max_images": 0}
    rows = localize_rows(world, loc, class_labels=True)
    words = word_rows(world, ["val", "test"], 0, need_masks=False)
    labels = world.samples.set_index("sample_id")["label_name"]
    assert rows["sample_id"].is_unique and set(rows["word_type"]) == {"class"}
    assert (rows["caption"] == rows["word"]).all() and (rows["context"] == "").all()
    assert list(rows["word"]) == [labels[s] for s in rows["sample_id"]]
    for r in rows.itertuples():  # the mask: the objects of the image's object word that its label names
        shape = labels[r.sample_id].split()[-1]
        named = words[(words["sample_id"] == r.sample_id) & (words["word"] == shape)]
        assert r.objects == ";".join(sorted({o for v in named["objects"] for o in str(v).split(";")}))
    assert list(rows.index) == list(range(len(rows)))


def test_a_class_label_has_mi_maps_and_no_attention(world, dit):
    rows = localize_rows(world, {"split": "test", "calibration_split": "val", "max_images": 2}, class_labels=True)
    maps = compute_maps(dit, world, rows, n_draws=3, sampler=LogSNRSampler(1.0, 1.5, 2.0), seed=0, batch_size=8,
                        progress=False)
    assert maps["cmi"].shape == (len(rows), 8, 8) and "attention_itd" not in maps
    np.testing.assert_array_equal(maps["mi"], maps["cmi"])  # the class against the null class, once
    assert (maps["mi"] >= 0).all() and (maps["cmi_nats"] > 0).all()


def test_text_tasks_refuse_a_class_conditional_model(dit):
    with pytest.raises(ModelConfigError, match="class-conditional: ARO .* needs captions"):
        require_text(dit, "ARO (caption choice)")


def config_with_dit(dit_source: str, **info) -> dict:
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config.yaml").read_text()))
    cfg["models"]["dit"] = {"kind": "dit", "source": dit_source, "layers": [], "timesteps": []}
    cfg["infodecomp"] = {**cfg.get("infodecomp", {}), **info}
    return cfg


def test_config_refuses_text_tasks_when_every_information_model_is_class_conditional(dit, tmp_path):
    none = {task: {"datasets": []} for task in ("aro", "intervene", "maps", "mmse")}
    base = {**none, "models": ["dit"], "localize": {"datasets": ["shapes"]}}
    for task in ("aro", "intervene", "mmse"):
        with pytest.raises(ConfigError, match=rf"infodecomp.{task}.datasets: {task} reads captions, and the "
                                              rf"information models \['dit'\] are class-conditional"):
            validate_config(config_with_dit(dit.source, **{**base, task: {"datasets": ["shapes"]}}))
    cfg = validate_config(config_with_dit(dit.source, **base))
    assert info_models(cfg, "localize") == ["dit"] and info_models(cfg, "aro") == []
    # beside a text model, the text tasks run on it and the DiT localizes its classes
    mixed = validate_config(config_with_dit(dit.source, models=["shapes", "dit"], aro={"datasets": ["shapes"]}))
    assert info_models(mixed, "aro") == ["shapes"] and info_models(mixed, "localize") == ["shapes", "dit"]
