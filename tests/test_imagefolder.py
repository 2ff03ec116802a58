"""Bring-your-own images: class subfolders, optional captions CSV, seeded splits, clear errors."""
import logging
import re

import numpy as np
import pytest
from PIL import Image

from difflens.data.common import Dataset, DatasetError
from difflens.data.imagefolder import convert


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "mine"
    for c, colour in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((20, 30, 3), colour, np.uint8)).save(root / c / f"img{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_class_folders_become_labels_and_captions(folder, tmp_path):
    out = tmp_path / "out"
    convert(folder, out, seed=1)
    ds = Dataset.load(out)
    assert ds.classes == ["cat", "dog"] and len(ds.samples) == 10
    row = ds.row("dog/img3")
    assert row.label == 1 and row.caption == "a photo of a dog"
    assert np.asarray(ds.load_image("dog/img3"))[0, 0].tolist() == [10, 10, 200]
    assert set(ds.samples["split"]) <= {"train", "val", "test"}


def _write_captions(folder, rows):
    (folder / "captions.csv").write_text("image,caption\n" + "".join(f"{i},{c}\n" for i, c in rows))


ALL_IMAGES = [f"{c}/img{i}.png" for c in ("cat", "dog") for i in range(5)]


def test_captions_csv_and_seeded_splits(folder, tmp_path):
    _write_captions(folder, [(im, "a sleepy red cat" if im == "cat/img0.png" else f"photo {im}") for im in ALL_IMAGES])
    convert(folder, tmp_path / "a", seed=5, captions="captions.csv")
    convert(folder, tmp_path / "b", seed=5)
    a, b = Dataset.load(tmp_path / "a"), Dataset.load(tmp_path / "b")
    assert a.row("cat/img0").caption == "a sleepy red cat" and a.row("dog/img4").caption == "photo dog/img4.png"
    assert list(a.samples["split"]) == list(b.samples["split"])


def test_captions_that_do_not_match_the_images_fail_with_counts(folder, tmp_path):
    _write_captions(folder, [("cat/img0.png", "a sleepy red cat"), ("./cat/img1.png", "a cat"),
                             ("cats/img2.png", "a cat")])
    with pytest.raises(DatasetError) as err:
        convert(folder, tmp_path / "o", captions="captions.csv")
    message = str(err.value)
    assert "captions.csv does not match the images" in message
    assert "2 caption row(s) name no image (e.g. ['./cat/img1.png', 'cats/img2.png'])" in message
    assert "9 image(s) have no caption row (e.g. ['cat/img1.png', 'cat/img2.png', 'cat/img3.png'])" in message
    assert "allow_missing_captions" in message and not (tmp_path / "o" / "dataset.json").exists()
    _write_captions(folder, [(im, "x") for im in ALL_IMAGES[:-1]])  # one image short, every row matches
    with pytest.raises(DatasetError, match=r"0 caption row\(s\) name no image .* 1 image\(s\) have no caption "
                                           r"row \(e\.g\. \['dog/img4\.png'\]\)"):
        convert(folder, tmp_path / "o", captions="captions.csv")


def test_allow_missing_captions_warns_once_and_uses_the_template(folder, tmp_path, caplog):
    _write_captions(folder, [("cat/img0.png", "a sleepy red cat"), ("cats/img2.png", "a cat")])
    with caplog.at_level(logging.WARNING, logger="difflens.data.imagefolder"):
        convert(folder, tmp_path / "o", seed=1, captions="captions.csv", allow_missing_captions=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 caption row(s) name no image" in warnings[0].getMessage()
    assert "9 image(s) have no caption row" in warnings[0].getMessage()
    ds = Dataset.load(tmp_path / "o")
    assert ds.row("cat/img0").caption == "a sleepy red cat"
    assert ds.row("cat/img1").caption == "a photo of a cat" and ds.row("dog/img3").caption == "a photo of a dog"


def test_prepare_passes_allow_missing_captions(folder, tmp_path):
    from difflens.data.prepare import prepare_dataset

    _write_captions(folder, [("cat/img0.png", "a sleepy red cat")])
    params = {"path": str(folder), "captions": "captions.csv"}
    with pytest.raises(DatasetError, match="9 image"):
        prepare_dataset("mine", "imagefolder", params, tmp_path / "a", None, 0)
    prepare_dataset("mine", "imagefolder", {**params, "allow_missing_captions": True}, tmp_path / "b", None, 0)
    assert Dataset.load(tmp_path / "b").row("dog/img0").caption == "a photo of a dog"


def test_errors_name_the_problem(folder, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        convert(tmp_path / "missing", tmp_path / "o")
    (folder / "caps.csv").write_text("file,text\n")
    with pytest.raises(DatasetError, match="caps.csv.*'image' and 'caption'"):
        convert(folder, tmp_path / "o", captions="caps.csv")
    (folder / "cat" / "img0.png").write_bytes(b"broken")
    convert(folder, tmp_path / "o2")
    with pytest.raises(DatasetError, match="cat/img0"):
        Dataset.load(tmp_path / "o2").load_image("cat/img0")


# ---- words.csv and aro.csv: what the information stage reads ------------------------------------------------------
def test_caption_words_keep_content_words_once_in_order():
    from difflens.data.imagefolder import caption_words

    assert caption_words("A red circle to the left of a blue square.") == ["red", "circle", "left", "blue", "square"]
    assert caption_words("The dog's t-shirt, the DOG", "all") == ["The", "dog's", "t-shirt", "DOG"]
    assert caption_words("a cat on a mat") == ["cat", "on", "mat"]  # relation words stay
    with pytest.raises(DatasetError, match=r"words must be one of \['content', 'all'\]"):
        caption_words("a cat", "nouns")


def test_captions_and_templates_become_word_rows(folder, tmp_path):
    from difflens.info.inputs import word_rows

    _write_captions(folder, [(im, "a cat and a catapult" if im == "cat/img0.png" else "a dog") for im in ALL_IMAGES])
    convert(folder, tmp_path / "a", captions="captions.csv")
    words = Dataset.load(tmp_path / "a").words
    first = words[words["sample_id"] == "cat/img0"]
    assert list(first["word"]) == ["cat", "catapult"]
    assert list(first["context"]) == ["a and a catapult", "a cat and a"]  # whole-word removal
    assert (words["objects"] == "").all() and (words["word_type"] == "word").all()
    assert len(words) == 2 + 9  # one row per (image, content word)
    convert(folder, tmp_path / "t", caption_template="a {label}", words="all")  # template captions, every word
    templated = Dataset.load(tmp_path / "t")
    assert sorted(zip(templated.words["sample_id"], templated.words["word"]))[:2] == [("cat/img0", "a"),
                                                                                      ("cat/img0", "cat")]
    rows = word_rows(templated, ["train", "val", "test"], 0, need_masks=False)  # the information stage's check
    assert len(rows) == 2 * 10 and set(rows["caption"]) == {"a cat", "a dog"}


def _write_choices(folder, text: str) -> None:
    (folder / "choices.csv").write_text(text)


def test_choices_become_aro_items(folder, tmp_path):
    from difflens.info.aro import select_items

    _write_choices(folder, 'image,caption,negatives,kind,group\n'
                           'cat/img0.png,a red cat,"[""a blue cat"", ""a red dog""]",colour,red\n'
                           'dog/img1.png,a dog on a mat,a mat on a dog | a dog under a mat,,\n')
    convert(folder, tmp_path / "o", choices="choices.csv")
    ds = Dataset.load(tmp_path / "o")
    assert ds.meta["tables"] == ["samples", "words", "aro"]
    assert ds.aro.to_dict("records") == [
        {"sample_id": "cat/img0", "kind": "colour", "group": "red", "caption": "a red cat",
         "negatives": '["a blue cat", "a red dog"]'},
        {"sample_id": "dog/img1", "kind": "choice", "group": "", "caption": "a dog on a mat",
         "negatives": '["a mat on a dog", "a dog under a mat"]'}]
    assert len(select_items(ds.aro, ds.samples, "all", 0, ds.name)) == 2  # split all: wherever the images fell


@pytest.mark.parametrize("row,message", [
    ("cats/img0.png,a cat,a dog", "image 'cats/img0.png' is not an image of the folder"),
    ('cat/img0.png,a cat,"[""a dog"", 3]"', "the JSON list must hold captions"),
    ('cat/img0.png,a cat,"[""a dog"""', "negatives '[\"a dog\"' is neither a JSON list nor |-separated text"),
    ("cat/img0.png,a cat,a dog|", "empty caption or negative"),
    ("cat/img0.png,,a dog", "empty caption or negative"),
    ("cat/img0.png,a cat,a dog|a cat", "a negative equals the caption 'a cat'"),
])
def test_a_bad_choices_row_names_file_and_line(folder, tmp_path, row, message):
    _write_choices(folder, f"image,caption,negatives\ndog/img0.png,a dog,a cat\n{row}\n")
    with pytest.raises(DatasetError, match=r"choices file choices.csv, line 3: .*" + re.escape(message)):
        convert(folder, tmp_path / "o", choices="choices.csv")


def test_a_choices_file_without_its_columns_is_refused(folder, tmp_path):
    _write_choices(folder, "image,caption\ncat/img0.png,a cat\n")
    with pytest.raises(DatasetError, match=r"choices file choices.csv lacks column\(s\) \['negatives'\]"):
        convert(folder, tmp_path / "o", choices="choices.csv")
