"""Bring-your-own images: class subfolders, optional captions CSV, seeded splits, clear errors."""
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


def test_captions_csv_and_seeded_splits(folder, tmp_path):
    (folder / "captions.csv").write_text("image,caption\ncat/img0.png,a sleepy red cat\n")
    convert(folder, tmp_path / "a", seed=5, captions="captions.csv")
    convert(folder, tmp_path / "b", seed=5)
    a, b = Dataset.load(tmp_path / "a"), Dataset.load(tmp_path / "b")
    assert a.row("cat/img0").caption == "a sleepy red cat" and a.row("cat/img1").caption == "a photo of a cat"
    assert list(a.samples["split"]) == list(b.samples["split"])


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
