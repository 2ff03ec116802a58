"""Captioned image folders through the information stage: a task is refused at config validation when its data set
writes no table it reads (naming the key, the data set, the file and how to provide it); localization scores only
the word rows that have masks; and the maps task draws per-word MI / CMI / attention maps of a captioned image folder
through the workflow, with no masks (one class subfolder per shape, small shapes-world images, captions that name the
right colour for half of them and a wrong one for the rest)."""
import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from difflens.config import ConfigError, dataset_sources, validate_config
from difflens.data.registry import SOURCE_TABLES, tables_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def _refusal(cfg, task: str, name: str, dataset: dict) -> str:
    bad = copy.deepcopy(cfg)
    bad["datasets"][name] = dataset
    bad["infodecomp"][task]["datasets"] = [name]
    with pytest.raises(ConfigError) as err:
        validate_config(bad)
    return str(err.value)


@pytest.mark.parametrize("task,source,missing,how", [
    ("localize", "pets", "words.csv", "give the images captions in an imagefolder data set (params.captions"),
    ("maps", "caltech101", "words.csv", "or use a source that writes one (shapes, coco_it, coco100_it, coco_wl)"),
    ("intervene", "aro_vg_relation", "words.csv", "params.caption_template"),
    ("aro", "coco_wl", "aro.csv", "give an imagefolder data set params.choices (a CSV with columns image, caption "
                                  "and negatives), or use a source that writes one (shapes, aro_vg_relation, "
                                  "aro_vg_attribution, aro_coco_order, aro_flickr_order)"),
], ids=["localize-pets", "maps-caltech101", "intervene-aro_vg_relation", "aro-coco_wl"])
def test_a_task_its_data_set_cannot_feed_is_refused(cfg, task, source, missing, how):
    msg = _refusal(cfg, task, "theirs", {"source": source})
    assert msg.startswith(f"config key infodecomp.{task}.datasets: data set 'theirs' (source {source}) writes no "
                          f"{missing}")
    assert f"which infodecomp.{task} reads; to provide it, " in msg and how in msg and "docs/own-data.md" in msg


def test_an_image_folder_feeds_caption_choice_only_with_choices(cfg, tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "choices.csv").write_text("image,caption,negatives\n")
    folder = {"source": "imagefolder", "params": {"path": str(tmp_path)}}
    msg = _refusal(cfg, "aro", "mine", folder)
    assert "data set 'mine' (source imagefolder) writes no aro.csv (candidate captions per image)" in msg
    assert "set datasets.mine.params.choices to a CSV with columns image, caption and negatives" in msg
    msg = _refusal(cfg, "aro", "mine", {**folder, "params": {"path": str(tmp_path), "choices": "choises.csv"}})
    assert "config key datasets.mine.params.choices: 'choises.csv' is not a file" in msg
    good = copy.deepcopy(cfg)
    good["datasets"]["mine"] = {**folder, "params": {"path": str(tmp_path), "choices": "choices.csv"}}
    for task in ("aro", "maps", "localize", "intervene"):  # words.csv comes from any captions, template ones too
        good["infodecomp"][task]["datasets"] = ["mine", "shapes"]
    validate_config(good)


def test_every_loader_says_what_it_writes():
    assert sorted(SOURCE_TABLES) == sorted(dataset_sources())
    assert tables_of("imagefolder", {"path": "x"}) == ("words",)
    assert tables_of("imagefolder", {"path": "x", "choices": "c.csv"}) == ("words", "aro")


def test_the_loaders_table_matches_what_they_write(tmp_path):
    from difflens.data.common import Dataset
    from difflens.data.imagefolder import convert
    from difflens.data.shapes import ShapesConfig, generate

    generate(tmp_path / "shapes", ShapesConfig(n_images=4), progress=False)
    (tmp_path / "mine" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mine" / "cat" / "0.png")
    (tmp_path / "mine" / "choices.csv").write_text("image,caption,negatives\ncat/0.png,a cat,a dog\n")
    convert(tmp_path / "mine", tmp_path / "plain")
    convert(tmp_path / "mine", tmp_path / "choices", choices="choices.csv")
    for out, source, params in (("shapes", "shapes", {}), ("plain", "imagefolder", {}),
                                ("choices", "imagefolder", {"choices": "choices.csv"})):
        written = Dataset.load(tmp_path / out).meta["tables"]
        assert sorted(written) == sorted(("samples",) + tables_of(source, params)), out


# ---- localization: only the rows with masks ---------------------------------------------------------------------
def test_localization_leaves_out_the_word_rows_without_masks(tmp_path, caplog):
    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.info.localize_shards import localize_rows

    generate(tmp_path, ShapesConfig(n_images=30), progress=False)
    loc = {"split": "test", "calibration_split": "val", "max_images": 0}
    ds = Dataset.load(tmp_path)
    every = localize_rows(ds, loc)
    unmasked = every.groupby("sample_id").head(1)[["sample_id", "word"]]
    keys = ds.words.set_index(["sample_id", "word"]).index
    ds.words.loc[keys.isin(pd.MultiIndex.from_frame(unmasked)), "objects"] = ""
    with caplog.at_level(logging.WARNING, logger="difflens.info.localize_shards"):
        kept = localize_rows(ds, loc)
    assert len(kept) == len(every) - len(unmasked) and (kept["objects"] != "").all()
    assert f"shapes: {len(unmasked)} of {len(every)} word rows name no mask" in caplog.text
    ds.words["objects"] = ""
    with pytest.raises(ValueError, match="none of its .* selected word rows names a mask.*infodecomp.maps"):
        localize_rows(ds, loc)


# ---- the maps task: rows, memory, summary ----------------------------------------------------------------------
def test_maps_rows_take_the_split_and_the_first_images(tmp_path):
    from difflens.data.common import Dataset
    from difflens.data.shapes import ShapesConfig, generate
    from difflens.info.word_maps import maps_rows

    generate(tmp_path, ShapesConfig(n_images=20), progress=False)
    ds = Dataset.load(tmp_path)
    every = maps_rows(ds, {"split": "all", "max_images": 0})
    assert len(every) == len(ds.words) and list(every["word"]) == list(ds.words["word"])  # words.csv order
    first = maps_rows(ds, {"split": "all", "max_images": 3})
    assert list(dict.fromkeys(first["sample_id"])) == list(dict.fromkeys(ds.words["sample_id"]))[:3]
    test = maps_rows(ds, {"split": "test", "max_images": 0})
    assert set(test["split"]) == {"test"} and list(test.index) == list(range(len(test)))


def test_maps_job_memory_counts_the_images_with_the_most_words(tmp_path):
    from difflens.info.memory import MB, estimator_bytes, maps_held_mb, row_bytes

    words = tmp_path / "words.csv"
    pd.DataFrame({"sample_id": ["a", "a", "a", "b", "c", "c"], "caption": ["x"] * 6, "word": list("pqrstu")}).to_csv(
        words, index=False)
    held = maps_held_mb(words, 2, 512, 10)
    assert held == pytest.approx((2 * 5 * row_bytes(512, 0) + estimator_bytes(512, 10, 3)) / MB)
    assert maps_held_mb(words, 0, 512, 10) > held and maps_held_mb(tmp_path / "none.csv", 0, 512, 10) == 0


def test_summary_names_the_words_the_images_support_most(tmp_path):
    from difflens.report.summary import headline_rows

    path = tmp_path / "info" / "shapes" / "mine" / "word_maps.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a", "a", "b"], "word": ["red", "circle", "red"],
                  "cmi_s_nats": [4.0, 3.0, -2.0]}).to_csv(path, index=False)
    row = headline_rows({"word_maps": [str(path)]}, {"shapes": "shapes"}).iloc[0]
    assert (row["section"], row["model"], row["dataset"]) == ("Information: word maps", "shapes", "mine")
    assert row["this run"] == "circle 3.00, red 1.00 (3 rows on 2 images; 1 with negative i^s)"


# ---- through the workflow ----------------------------------------------------------------------------------------
def shape_folder(root: Path, n_images: int = 12) -> dict[str, dict]:
    """A captioned image folder of single shapes-world objects (32 px), one subfolder per shape, and its captions
    CSV: "a <colour> <shape>", with the image's own colour for even images and the next colour for odd ones.
    Returns per sample id: the colour named, whether it is the image's, and the object's mask."""
    from difflens.data.shapes import COLOURS, ShapesConfig, render, sample_scene

    colours, truth, captions = list(COLOURS), {}, []
    for i in range(n_images):
        scene = sample_scene(3, i, ShapesConfig(p_two_objects=0.0))
        image, masks = render(scene, 32)
        obj = scene["objects"][0]
        named = obj["colour"] if i % 2 == 0 else colours[(colours.index(obj["colour"]) + 1) % len(colours)]
        (root / obj["shape"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / obj["shape"] / f"{i}.png")
        captions.append({"image": f"{obj['shape']}/{i}.png", "caption": f"a {named} {obj['shape']}"})
        truth[f"{obj['shape']}/{i}"] = {"colour": named, "shape": obj["shape"], "right": i % 2 == 0, "mask": masks[0]}
    pd.DataFrame(captions).to_csv(root / "captions.csv", index=False)
    return truth


def latent_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """An object's mask on the latent grid (bilinear, then half covered)."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side), Image.BILINEAR)) >= 128


def test_a_captioned_image_folder_gets_word_maps_through_the_workflow(tmp_path):
    """The folder with its captions and the same folder with template captions ("a <class>"), through the maps
    task of the shipped shapes model (8 stratified draws): one row per (image, content word), every map finite on
    the 16 x 16 latent grid and summing to its total; i^o maps never negative. What the maps show, held by every
    row at 8 and 16 draws and two seeds when measured: the CMI map lies on the object (its mean inside the object's
    mask more than twice the mean outside: 3.5x at the least); the i^s CMI of the colour word is positive where the
    caption names the image's colour and negative where it names another (at least +4.7 and at most -32 nats),
    while i^o, which grows with any change of the prediction, is larger for the wrong colours."""
    from workflows.runs import run, snakemake_cmd, write_config

    truth = shape_folder(tmp_path / "shapes")
    folder = {"path": str(tmp_path / "shapes")}
    datasets = {"captioned": {**folder, "captions": "captions.csv"},
                "templated": {**folder, "caption_template": "a {label}"}}
    config = {"results": str(tmp_path / "results"),
              "datasets": {name: {"source": "imagefolder", "params": params} for name, params in datasets.items()},
              "infodecomp": {"n_draws": 8, "batch_size": 64, "models": ["shapes"], "aro": {"datasets": []},
                             "localize": {"datasets": []}, "intervene": {"datasets": []},
                             "maps": {"datasets": ["captioned", "templated"]}}}
    info = tmp_path / "results" / "info" / "shapes"
    targets = [info / ds / f for ds in ("captioned", "templated") for f in ("word_maps.csv", "word_maps.png")]
    run(snakemake_cmd(targets, write_config(tmp_path, config), "--profile", "profiles/local", "--cores", "2"))
    for ds, words_of in (("captioned", lambda t: {t["colour"], t["shape"]}), ("templated", lambda t: {t["shape"]})):
        totals = pd.read_csv(info / ds / "word_maps.csv", dtype={"sample_id": str})
        assert sorted(zip(totals["sample_id"], totals["word"])) == sorted((s, w) for s, t in truth.items()
                                                                        for w in words_of(t))
        with np.load(info / ds / "word_maps.npz") as z:
            maps = {k: z[k] for k in z.files}
        assert list(maps["sample_id"]) == list(totals["sample_id"]) and list(maps["word"]) == list(totals["word"])
        for key in ("mi", "cmi", "cmi_s", "attention_itd"):
            assert maps[key].shape == (len(totals), 16, 16) and np.isfinite(maps[key]).all(), key
        assert (maps["mi"] >= 0).all() and (maps["cmi"] >= 0).all()
        np.testing.assert_allclose(maps["cmi"].sum((1, 2)), totals["cmi_nats"], rtol=1e-4)
        np.testing.assert_allclose(maps["mi"].sum((1, 2)), totals["mi_nats"], rtol=1e-4)
        inside = [(m[latent_mask(truth[s]["mask"], 16)].mean(), m[~latent_mask(truth[s]["mask"], 16)].mean())
                  for s, m in zip(maps["sample_id"], maps["cmi"])]
        assert all(i > 2 * o for i, o in inside), inside
        assert Image.open(info / ds / "word_maps.png").size[0] > 400
    totals = pd.read_csv(info / "captioned" / "word_maps.csv", dtype={"sample_id": str})
    colour = totals[totals["word"] == totals["sample_id"].map(lambda s: truth[s]["colour"])]
    right = colour["sample_id"].map(lambda s: truth[s]["right"])
    assert (colour.loc[right, "cmi_s_nats"] > 0).all() and (colour.loc[~right, "cmi_s_nats"] < 0).all(), colour
    assert colour.loc[~right, "cmi_nats"].min() > colour.loc[right, "cmi_nats"].max(), colour
