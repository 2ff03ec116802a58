"""Image geometry (models.<name>.geometry): ``crop`` (shorter side resized, centre crop) or ``squash`` (the whole
image resized to the model's square, as the Info-Decomp code resizes COCO images and masks to 512 x 512); images and
masks go through the same one."""
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from difflens.config import ConfigError, load_config, validate_config
from difflens.info.inputs import model_view, preprocess_mask
from difflens.models import ModelConfigError, load_model

ROOT = Path(__file__).resolve().parents[1]
SHAPES_MODEL = ROOT / "resources" / "shapes_model"  # 32 px; loaded without its UNet and text encoder (seconds)


def pixel_model(geometry: str):
    return load_model("shapes", str(SHAPES_MODEL), device="cpu", components=["vae"], geometry=geometry)


def test_squash_keeps_the_whole_image_crop_its_centre():
    """A 96 x 32 image, blue with 8 px red bands at its left and right: at 32 px, squash keeps the bands (the whole
    image resized), crop keeps only the blue centre."""
    rgb = np.zeros((32, 96, 3), np.uint8)
    rgb[..., 2] = 255
    rgb[:, :8] = rgb[:, -8:] = (255, 0, 0)
    image = Image.fromarray(rgb)
    squash, crop = (pixel_model(g).preprocess([image])[0].numpy() for g in ("squash", "crop"))
    assert squash.shape == crop.shape == (3, 32, 32)
    want = np.asarray(image.resize((32, 32), Image.BICUBIC), np.float32) / 127.5 - 1
    np.testing.assert_allclose(squash, want.transpose(2, 0, 1), atol=1e-6)
    red = squash[0] > 0.5
    assert red[:, :2].all() and red[:, -2:].all() and not red[:, 4:-4].any()
    np.testing.assert_allclose(crop, np.broadcast_to(np.array([-1, -1, 1.0], np.float32)[:, None, None], crop.shape))


@pytest.mark.parametrize("geometry", ["crop", "squash"])
def test_a_mask_stays_on_its_pixels_through_either_geometry(geometry):
    """A white rectangle on a 128 x 64 black image and its mask, through the model's preprocessing and
    preprocess_mask of the same geometry, cover the same pixels of the 32 px input; through the other geometry's
    mask they do not."""
    mask = np.zeros((64, 128), bool)
    mask[16:48, 32:80] = True
    image = Image.fromarray(np.repeat(mask[..., None] * np.uint8(255), 3, axis=2))
    seen = pixel_model(geometry).preprocess([image])[0].numpy().mean(0) > 0
    other = "squash" if geometry == "crop" else "crop"
    np.testing.assert_array_equal(preprocess_mask(mask, 32, geometry), seen)
    assert (preprocess_mask(mask, 32, other) != seen).sum() >= 32
    view = model_view(image, geometry)
    assert view.shape == ((64, 128, 3) if geometry == "squash" else (64, 64, 3))


def test_an_unknown_geometry_is_refused_naming_the_key():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["models"]["shapes"]["geometry"] = "stretch"
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg)
    assert "models.shapes.geometry" in str(exc.value) and "'stretch'" in str(exc.value) and "squash" in str(exc.value)
    with pytest.raises(ModelConfigError, match=r"geometry 'stretch' \(config key models.<name>.geometry\) is not one "
                                               r"of \['crop', 'squash'\]"):
        pixel_model("stretch")
    with pytest.raises(ModelConfigError, match="models.<name>.geometry"):
        preprocess_mask(np.ones((4, 4), bool), 2, "stretch")


def test_the_paper_config_runs_sd21_base_in_fp32_on_squashed_images():
    paper = load_config(ROOT / "configs" / "infodecomp.yaml")["models"]["sd21base"]
    assert (paper["dtype"], paper["geometry"], paper["resolution"]) == ("float32", "squash", 512)
    assert load_config(ROOT / "config.yaml")["models"]["shapes"]["geometry"] == "crop"  # the default
