"""External baselines (CLIP / DINOv2 image features under the linear probe) on tiny random-weight models."""
import logging

import numpy as np
import pytest
import torch

from difflens.classify.baselines import (BaselineError, baseline_probe_table, image_features, load_image_encoder,
                                         sample_rows)
from difflens.data.common import Dataset
from difflens.data.shapes import CLASSES, ShapesConfig, generate
from tiny_pipelines import build_tiny_clip, build_tiny_dinov2


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline-shapes")
    generate(root, ShapesConfig(n_images=60), progress=False)
    return Dataset.load(root)


@pytest.mark.parametrize("build", [build_tiny_clip, build_tiny_dinov2])
def test_features_are_the_pooled_output_of_each_image(build, shapes, tmp_path):
    processor, encoder = load_image_encoder(str(build(tmp_path / "model")))
    feats, unreadable = image_features(processor, encoder, shapes, batch_size=7, progress=False)
    assert feats.shape == (60, 16) and feats.dtype == np.float32 and unreadable == []
    sid = shapes.samples["sample_id"].iloc[9]
    with torch.no_grad():
        one = encoder(pixel_values=processor(images=[shapes.load_image(sid)], return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(feats[9], one.pooler_output[0].numpy(), rtol=1e-4, atol=1e-5)
    if build is build_tiny_clip:
        assert type(encoder).__name__.startswith("CLIPVision")  # the image tower alone


def test_probe_table_rows_for_label_and_attributes(shapes):
    """Features that are the one-hot label: label, colour and shape (functions of the label) are read perfectly,
    although the test split lacks colours that train has (one coding for every split); one row per target, model
    the baseline's name, layer ``image``, no timestep, every train row of a target counted."""
    rows = sample_rows(shapes)
    test_colours = set(rows.loc[rows["split"] == "test", "colour"])
    assert test_colours < set(rows.loc[rows["split"] == "train", "colour"])  # the case a per-split coding gets wrong
    feats = np.eye(len(CLASSES), dtype=np.float32)[rows["label"]]
    table = baseline_probe_table("dinov2", "shapes", feats, rows, [])
    assert set(table["target"]) >= {"label", "colour", "shape", "has_red"} and (table["model"] == "dinov2").all()
    assert (table["layer"] == "image").all() and table["timestep"].isna().all()
    by_target = table.set_index("target")
    assert by_target.loc[["label", "colour", "shape"], "test_accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert by_target.loc[["label", "colour", "shape"], "n_classes"].tolist() == [len(CLASSES), 4, 3]
    n_train = by_target["n_train"]
    assert n_train["label"] == (rows["split"] == "train").sum()
    assert n_train["axis"] == ((rows["split"] == "train") & (rows["axis"] != "")).sum()  # pairs only
    with pytest.raises(BaselineError, match="59 feature vectors for 60 rows"):
        baseline_probe_table("dinov2", "shapes", feats[1:], rows, ["label"])


def test_unreadable_image_is_named_and_left_out(shapes, tmp_path, caplog):
    processor, encoder = load_image_encoder(str(build_tiny_clip(tmp_path / "clip")))
    sid = shapes.samples["sample_id"].iloc[3]
    path = shapes.image_path(sid)
    original = path.read_bytes()
    try:
        path.write_bytes(b"not a png")
        with caplog.at_level(logging.WARNING):
            feats, unreadable = image_features(processor, encoder, shapes, progress=False)
    finally:
        path.write_bytes(original)
    assert unreadable == [sid] and len(feats) == 59 and sid in caplog.text
    assert sid not in set(sample_rows(shapes, unreadable)["sample_id"])


def test_a_folder_that_is_not_an_image_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaselineError, match="baseline model '.*empty' could not be loaded"):
        load_image_encoder(str(tmp_path / "empty"))
