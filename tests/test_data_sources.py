"""Tests of the real-source converters (difflens.data.{pets,caltech,aircraft,flowers,aro,coco,sources}) on tiny
fixtures written in the sources' real on-disk formats (tests/fixtures_data.py)."""
from __future__ import annotations

import json
import runpy
import sys
import tarfile
import types
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import fixtures_data as fx
from difflens.data import aro, coco, sources
from difflens.data.common import Dataset, DatasetError

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# pycocotools 2.0.11's decode warns under numpy 2 on every call (its masks are right; nothing to act on here)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def convert(name, raw, out, seed=0, **params) -> Dataset:
    path = sources.convert(name, raw, out, seed, **params)
    assert path == Path(out) / "dataset.json"
    return Dataset.load(out)


# ---------------------------------------------------------------------------------------------- registry / helpers

def test_registry_names_and_raw_names():
    assert set(sources.names()) == {"pets", "caltech101", "aircraft", "flowers102", "aro_vg_relation",
                                    "aro_vg_attribution", "aro_coco_order", "aro_flickr_order", "coco_it",
                                    "coco100_it", "coco_wl"}
    for name, (dl, conv) in sources.SOURCES.items():
        dl.resolve(), conv.resolve()  # every entry points at a real function
    assert sources.raw_name("coco_wl") == sources.raw_name("coco_it") == "coco2017"
    assert sources.raw_name("pets") == "pets"
    with pytest.raises(ValueError, match="unknown data set"):
        sources.raw_name("imagenet")


def test_unknown_parameter_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['val_fractoin'\].*allowed"):
        sources.convert("pets", tmp_path, tmp_path / "out", 0, val_fractoin=0.2)


@pytest.mark.parametrize("name,cls", [("pets", "OxfordIIITPet"), ("caltech101", "Caltech101"),
                                      ("aircraft", "FGVCAircraft"), ("flowers102", "Flowers102")])
def test_torchvision_downloads_call_the_class(monkeypatch, tmp_path, name, cls):
    calls = []
    fake = types.ModuleType("torchvision.datasets")
    setattr(fake, cls, lambda **kw: calls.append(kw))
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    sources.download(name, tmp_path / "raw")
    assert calls == [{"root": str(tmp_path / "raw"), "download": True}]


def test_fetch_url_checks_md5_and_extract_refuses_escape(tmp_path):
    from torchvision.datasets.utils import calculate_md5

    src = tmp_path / "a.json"
    src.write_text("[1, 2]")
    md5 = calculate_md5(src)
    got = sources.fetch_url(src.as_uri(), tmp_path / "dl" / "a.json", md5)
    assert got.read_text() == "[1, 2]"
    with pytest.raises(DatasetError, match=f"md5 {md5} does not match the expected 0{{32}}"):
        sources.fetch_url(src.as_uri(), tmp_path / "dl" / "b.json", "0" * 32)
    assert not (tmp_path / "dl" / "b.json").exists() and not (tmp_path / "dl" / "b.json.part").exists()
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("images/x.txt", "x")
    sources.extract_archive(good, tmp_path / "ex")
    assert (tmp_path / "ex" / "images" / "x.txt").read_text() == "x"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DatasetError, match="outside"):
        sources.extract_archive(evil, tmp_path / "ex2")


@pytest.fixture
def served(tmp_path):
    """(folder, base URL): an HTTP server on the loopback interface serving the folder, for torchvision's
    download_url (which cannot read file:// URLs); nothing leaves the machine."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_url_over_http_goes_through_torchvision(served, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    folder, base = served
    (folder / "a.json").write_text("[1, 2]")
    (folder / "quota").write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    calls = []
    real = tvu.download_url
    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: calls.append(a) or real(*a, **k))
    md5 = tvu.calculate_md5(folder / "a.json")
    assert sources.fetch_url(f"{base}/a.json", tmp_path / "dl" / "a.json", md5).read_text() == "[1, 2]"
    assert calls == [(f"{base}/a.json", tmp_path / "dl", "a.json.part")]
    with pytest.raises(DatasetError, match=f"b.json: md5 {md5} does not match the expected 0{{32}}"):
        sources.fetch_url(f"{base}/a.json", tmp_path / "dl" / "b.json", "0" * 32)
    with pytest.raises(DatasetError, match="HTML page instead of images.zip"):
        sources.fetch_url(f"{base}/quota", tmp_path / "dl" / "images.zip", "0" * 32)
    assert sorted(f.name for f in (tmp_path / "dl").iterdir()) == ["a.json"]  # no partial or corrupt files


def test_fetch_url_keeps_a_good_file_and_replaces_a_stale_part(tmp_path):
    src = tmp_path / "a.json"
    src.write_text("[1, 2]")
    dest = tmp_path / "dl" / "a.json"
    dest.parent.mkdir()
    dest.write_text("kept")  # no checksum known: an existing file is kept, nothing fetched
    assert sources.fetch_url(src.as_uri(), dest).read_text() == "kept"
    dest.unlink()
    (tmp_path / "dl" / "a.json.part").write_text("[1")  # left by an interrupted run
    assert sources.fetch_url(src.as_uri(), dest).read_text() == "[1, 2]"
    assert not (tmp_path / "dl" / "a.json.part").exists()


def test_fetch_url_refuses_an_html_page(tmp_path):
    """Google Drive answers an over-quota download with a web page: not saved as the archive."""
    page = tmp_path / "download"
    page.write_text("  <!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")
    with pytest.raises(DatasetError, match="HTML page instead of images.zip"):
        sources.fetch_url(page.as_uri(), tmp_path / "dl" / "images.zip", "0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []
    assert sources.fetch_url(page.as_uri(), tmp_path / "dl" / "page.html").is_file()  # asked for a page: fine


def test_extract_archive_reads_the_content_not_the_name(tmp_path):
    archive = tmp_path / "download?id=abc"  # a tar.gz saved under a URL's last segment
    (tmp_path / "src" / "flickr30k-images").mkdir(parents=True)
    (tmp_path / "src" / "flickr30k-images" / "1.jpg").write_text("x")
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "flickr30k-images", arcname="flickr30k-images")
    sources.extract_archive(archive, tmp_path / "ex", remove=True)
    assert (tmp_path / "ex" / "flickr30k-images" / "1.jpg").read_text() == "x" and not archive.exists()
    assert (tmp_path / "ex" / ".download?id=abc.extracted").is_file()
    sources.extract_archive(archive, tmp_path / "ex")  # the marker says done: the missing archive is not read
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        tf.addfile(info)
    with pytest.raises(tarfile.TarError):  # the 'data' filter refuses a link out of the folder
        sources.extract_archive(link, tmp_path / "ex3")
    not_archive = tmp_path / "notes.zip"
    not_archive.write_text("plain text")
    with pytest.raises(DatasetError, match="neither a zip nor a tar archive"):
        sources.extract_archive(not_archive, tmp_path / "ex4")


def _zip_dir(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            zf.write(f, f.relative_to(folder.parent))
    return archive


def test_url_downloads_fetch_check_and_extract(tmp_path, monkeypatch):
    from torchvision.datasets.utils import calculate_md5

    pub = tmp_path / "published"
    fx.build_coco2017(pub / "src")
    val = _zip_dir(pub / "src" / "val2017", pub / "val2017.zip")
    ann = _zip_dir(pub / "src" / "annotations", pub / "annotations_trainval2017.zip")
    monkeypatch.setattr(coco, "REMOTES", (
        sources.Remote(val.as_uri(), "val2017.zip", calculate_md5(val), extract=True),
        sources.Remote(ann.as_uri(), "annotations_trainval2017.zip", None, extract=True)))
    sources.download("coco2017", tmp_path / "raw")
    assert (tmp_path / "raw" / "val2017" / "000000000001.jpg").is_file()
    assert (tmp_path / "raw" / "annotations" / "instances_val2017.json").is_file()
    assert not (tmp_path / "raw" / "val2017.zip").exists()  # archives removed after extraction
    sources.download("coco_wl", tmp_path / "raw")  # second call: markers say done, nothing fetched
    with pytest.raises(DatasetError, match="md5"):
        sources.download("coco_it", tmp_path / "raw2", md5={"annotations_trainval2017.zip": "0" * 32})
    # Flickr30k: annotation by URL, images from a local archive (they need a sign-up), or a clear error
    fx.build_order(pub / "flickr", "flickr")
    monkeypatch.setattr(aro, "BLIP_ANNOTATIONS", (pub / "flickr").as_uri() + "/")
    with pytest.raises(DatasetError, match="Flickr30k images are missing"):
        sources.download("aro_flickr_order", tmp_path / "fl")
    archive = _zip_dir(pub / "flickr" / "flickr30k-images", pub / "flickr30k-images.zip")
    sources.download("aro_flickr_order", tmp_path / "fl", images_archive=str(archive))
    assert convert("aro_flickr_order", tmp_path / "fl", tmp_path / "fl_out").aro.shape[0] == 5


def test_caption_and_holdout_helpers():
    assert sources.caption_for("Abyssinian") == "a photo of an Abyssinian"
    assert sources.caption_for("car_side") == "a photo of a car side"
    assert sources.caption_for("707-320", "a photo of a {}, a type of aircraft") == \
        "a photo of a 707-320, a type of aircraft"
    labels = [0] * 20 + [1] * 10
    held = sources.stratified_holdout(labels, 0.1, seed=3)
    assert held[:20].sum() == 2 and held[20:].sum() == 1
    assert (held == sources.stratified_holdout(labels, 0.1, seed=3)).all()


# ---------------------------------------------------------------------------------------------- classification

def test_pets(tmp_path):
    info = fx.build_pets(tmp_path / "raw")
    ds = convert("pets", tmp_path / "raw", tmp_path / "out", seed=1, val_fraction=0.2)
    assert ds.classes == info["classes"]
    s = ds.samples.set_index("sample_id")
    assert s.loc["american_bulldog_4", "label"] == 1
    assert s.loc["american_bulldog_4", "label_name"] == "American Bulldog"
    assert s.loc["Abyssinian_2", "caption"] == "a photo of an Abyssinian"
    assert s.loc["Bengal_12", "split"] == "test"
    counts = ds.samples.groupby(["label", "split"]).size().unstack()
    assert (counts["val"] == 2).all() and (counts["train"] == 8).all() and (counts["test"] == 3).all()
    assert ds.load_image("Bengal_1").size == (12, 10)
    assert (tmp_path / "out" / "images").is_symlink()
    again = convert("pets", tmp_path / "raw", tmp_path / "out2", seed=1, val_fraction=0.2)
    other = convert("pets", tmp_path / "raw", tmp_path / "out3", seed=2, val_fraction=0.2)
    assert list(again.samples["split"]) == list(ds.samples["split"])
    assert list(other.samples["split"]) != list(ds.samples["split"])


def test_pets_malformed_line_names_file_and_sample(tmp_path):
    fx.build_pets(tmp_path / "raw")
    path = tmp_path / "raw" / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    path.write_text(path.read_text() + "Bengal_99 x 1 1\n")
    with pytest.raises(DatasetError, match=r"trainval\.txt:\d+: sample 'Bengal_99'"):
        convert("pets", tmp_path / "raw", tmp_path / "out")


def test_caltech(tmp_path):
    info = fx.build_caltech(tmp_path / "raw")
    ds = convert("caltech101", tmp_path / "raw", tmp_path / "out", seed=0, fractions=(0.5, 0.2, 0.3))
    assert ds.classes == info["classes"] == ["Faces_easy", "accordion", "car_side"]
    assert not ds.samples["label_name"].str.contains("BACKGROUND").any()
    s = ds.samples.set_index("sample_id")
    assert s.loc["car_side-image_0003", "caption"] == "a photo of a car side"
    assert s.loc["car_side-image_0003", "image"] == "images/car_side/image_0003.jpg"
    split = ds.samples.groupby(["label_name", "split"]).size().unstack()
    assert split.loc["Faces_easy"].to_dict() == {"test": 6, "train": 10, "val": 4}
    assert split.loc["accordion"].to_dict() == {"test": 3, "train": 5, "val": 2}
    ds.load_image("accordion-image_0001")


def test_caltech_empty_class_folder(tmp_path):
    fx.build_caltech(tmp_path / "raw", {"accordion": 2, "empty": 0})
    (tmp_path / "raw" / "caltech101" / "101_ObjectCategories" / "empty").mkdir()
    with pytest.raises(DatasetError, match="class 'empty' has no images"):
        convert("caltech101", tmp_path / "raw", tmp_path / "out")


@pytest.mark.parametrize("level,col", [("variant", 0), ("family", 1), ("manufacturer", 2)])
def test_aircraft_levels_and_published_splits(tmp_path, level, col):
    info = fx.build_aircraft(tmp_path / "raw")
    ds = convert("aircraft", tmp_path / "raw", tmp_path / "out", annotation_level=level, link="copy")
    assert ds.classes == list(dict.fromkeys(a[col] for a in fx.AIRCRAFT))
    s = ds.samples.set_index("sample_id")
    for split, rows in info["splits"].items():
        for image_id, k in rows:
            assert s.loc[image_id, "split"] == split
            assert s.loc[image_id, "label_name"] == fx.AIRCRAFT[k][col]
    assert not (tmp_path / "out" / "images").is_symlink()  # copied
    f16 = next(i for i, k in info["splits"]["test"] if k == 3)
    assert s.loc[f16, "caption"] == f"a photo of a {fx.AIRCRAFT[3][col]}"


def test_aircraft_unknown_label(tmp_path):
    fx.build_aircraft(tmp_path / "raw")
    path = tmp_path / "raw" / "fgvc-aircraft-2013b" / "data" / "images_variant_val.txt"
    path.write_text(path.read_text() + "0999999 Concorde\n")
    with pytest.raises(DatasetError, match=r"images_variant_val\.txt:\d+: sample '0999999': label 'Concorde'"):
        convert("aircraft", tmp_path / "raw", tmp_path / "out")


def test_flowers(tmp_path, monkeypatch):
    info = fx.build_flowers(tmp_path / "raw")
    fake = types.ModuleType("torchvision.datasets")
    fake.Flowers102 = SimpleNamespace(classes=["pink primrose", "hard-leaved pocket orchid", "canterbury bells"])
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    ds = convert("flowers102", tmp_path / "raw", tmp_path / "out")
    assert ds.classes == fake.Flowers102.classes
    s = ds.samples.set_index("sample_id")
    for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
        for image_id in info["split"][key]:
            row = s.loc[f"image_{image_id:05d}"]
            assert row["split"] == split and row["label"] == info["labels"][image_id - 1] - 1
    assert (ds.samples["split"].value_counts().to_dict()) == {"test": 9, "train": 6, "val": 3}
    assert s.loc["image_00001", "caption"].startswith("a photo of a ")
    named = convert("flowers102", tmp_path / "raw", tmp_path / "out2", class_names=["rose", "iris", "aster"])
    assert named.classes == ["rose", "iris", "aster"]
    assert named.samples.set_index("sample_id").loc["image_00001", "caption"] in {
        "a photo of a rose", "a photo of an iris", "a photo of an aster"}


def test_flowers_without_names_warns_and_numbers_the_classes(tmp_path, monkeypatch, caplog):
    """torchvision's list does not fit the 3 classes: the labels are "flower 1" .. "flower 3", with a warning."""
    import logging

    fx.build_flowers(tmp_path / "raw")
    fake = types.ModuleType("torchvision.datasets")
    fake.Flowers102 = SimpleNamespace(classes=["pink primrose"])
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    with caplog.at_level(logging.WARNING, logger="difflens.data.flowers"):
        ds = convert("flowers102", tmp_path / "raw", tmp_path / "out")
    assert ds.classes == ["flower 1", "flower 2", "flower 3"]
    [record] = [r for r in caplog.records if r.name == "difflens.data.flowers"]
    assert record.levelno == logging.WARNING and record.getMessage().startswith(
        "flowers102: torchvision gives 1 flower names for the 3 classes: the labels are named 'flower 1' .. 'flower 3'")


def test_flowers_bad_set_id(tmp_path):
    from scipy.io import savemat

    fx.build_flowers(tmp_path / "raw")
    savemat(tmp_path / "raw" / "flowers-102" / "setid.mat",
            {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]), "tstid": np.array([[99]])})
    with pytest.raises(DatasetError, match=r"setid\.mat: tstid: sample 'image_00099'"):
        convert("flowers102", tmp_path / "raw", tmp_path / "out", class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------------------------- ARO

def test_vg_relation_crops_and_rows(tmp_path):
    info = fx.build_vg(tmp_path / "raw")
    ds = convert("aro_vg_relation", tmp_path / "raw", tmp_path / "out")
    assert len(ds.samples) == 3 and (ds.samples["split"] == "test").all()
    assert ds.samples["image"].nunique() == 2  # the first two cases share image and box: one crop
    red = np.asarray(ds.load_image("vgr-00000")).astype(int)
    assert red.shape == (15, 20, 3) and np.abs(np.median(red, axis=(0, 1)) - [255, 0, 0]).max() < 30  # jpeg
    white = np.asarray(ds.load_image("vgr-00002"))
    assert white.shape == (15, 20, 3) and white.min() > 215  # png source, bottom-right quadrant
    a = ds.aro.set_index("sample_id")
    assert a.loc["vgr-00000", "kind"] == "relation" and a.loc["vgr-00000", "group"] == "sitting on"
    assert a.loc["vgr-00000", "caption"] == info["relation"][0]["true_caption"]
    assert json.loads(a.loc["vgr-00000", "negatives"]) == [info["relation"][0]["false_caption"]]


def test_vg_attribution_groups_and_malformed(tmp_path):
    info = fx.build_vg(tmp_path / "raw")
    ds = convert("aro_vg_attribution", tmp_path / "raw", tmp_path / "out")
    assert list(ds.aro["group"]) == ["white_black", "red_small"]
    assert (ds.aro["kind"] == "attribute").all()
    bad = info["attribution"] + [{k: v for k, v in info["attribution"][0].items() if k != "bbox_w"}]
    (tmp_path / "raw" / "visual_genome_attribution.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"visual_genome_attribution\.json: test case 2 \(image_id 2340002\): "
                                           r"missing field\(s\) \['bbox_w'\]"):
        convert("aro_vg_attribution", tmp_path / "raw", tmp_path / "out2")


def test_vg_skips_cases_whose_captions_are_the_same(tmp_path, caplog):
    """A test case with nothing to choose (true caption = false caption, up to outer spaces) is skipped; one warning
    gives the count and names the first five; the other cases keep their ids (position in the file)."""
    import logging

    info = fx.build_vg(tmp_path / "raw")
    same = {**info["relation"][1], "true_caption": "the cup is near the cup",
            "false_caption": "the cup is near the cup "}
    cases = info["relation"][:1] + [same] * 6 + info["relation"][1:]
    (tmp_path / "raw" / "visual_genome_relation.json").write_text(json.dumps(cases))
    with caplog.at_level(logging.WARNING, logger="difflens.data.aro"):
        ds = convert("aro_vg_relation", tmp_path / "raw", tmp_path / "out")
    assert list(ds.samples["sample_id"]) == ["vgr-00000", "vgr-00007", "vgr-00008"]
    assert list(ds.aro["caption"]) == [c["true_caption"] for c in info["relation"]]
    [record] = [r for r in caplog.records if r.name == "difflens.data.aro" and r.levelno == logging.WARNING]
    assert record.getMessage() == (
        f"{tmp_path / 'raw' / 'visual_genome_relation.json'}: skipped 6 test case(s) whose true and false captions "
        "are the same: " + ", ".join(f"vgr-0000{i} (test case {i}, image_id 2340001)" for i in range(1, 6)) + ", ...")
    (tmp_path / "raw" / "visual_genome_relation.json").write_text(json.dumps([same]))
    with pytest.raises(DatasetError, match=r"visual_genome_relation\.json: no test cases"):
        convert("aro_vg_relation", tmp_path / "raw", tmp_path / "out2")


def test_order_perturbations_keep_words_and_are_seeded():
    caption = aro.clean_caption("A large red bus parked next to a white building!")
    tokens = aro.tokenize(caption)
    assert caption == "a large red bus parked next to a white building"
    negs = aro.order_negatives(caption, np.random.default_rng([0, 1, 2]))
    assert len(negs) == 4 and len(set(negs)) >= 3
    for neg in negs:
        assert Counter(aro.tokenize(neg)) == Counter(tokens)
    # nouns/adjectives move only among their own positions, every other word stays
    noun_adj = aro.tokenize(negs[0])
    for t, u in zip(tokens, noun_adj):
        assert aro.word_class(t) == aro.word_class(u)
        if aro.word_class(t) == "other":
            assert t == u
    assert [t for t, u in zip(tokens, aro.tokenize(negs[1])) if aro.word_class(t) != "other"] == \
        [u for t, u in zip(tokens, aro.tokenize(negs[1])) if aro.word_class(t) != "other"]
    within = aro.tokenize(negs[2])  # trigrams keep their word sets
    assert all(Counter(within[i:i + 3]) == Counter(tokens[i:i + 3]) for i in range(0, len(tokens), 3))
    assert negs == aro.order_negatives(caption, np.random.default_rng([0, 1, 2]))
    assert negs != aro.order_negatives(caption, np.random.default_rng([1, 1, 2]))


def test_order_perturbations_equal_to_the_caption_are_kept():
    """As in ARO, each perturbation is one draw, kept when it leaves the caption as it was: no noun or adjective to
    move, a single word, or (about half the draws) two nouns drawn in their own order."""
    assert aro.order_negatives("dog", np.random.default_rng(0)) == ["dog"] * 4
    assert aro.order_negatives("running and jumping quickly", np.random.default_rng(0))[0] == \
        "running and jumping quickly"  # no noun or adjective
    same = sum(aro.order_negatives("a dog chasing a cat", np.random.default_rng([s, 0, 0]))[0] == "a dog chasing a cat"
               for s in range(400))
    assert 160 <= same <= 240  # 1 in 2 (a redraw until different would give 0)
    assert [aro.word_class(w) for w in ("dog", "red", "sitting", "on", "two", "sits", "building")] == \
        ["noun", "adj", "other", "other", "other", "other", "noun"]


@pytest.mark.parametrize("name,source", [("aro_coco_order", "coco"), ("aro_flickr_order", "flickr")])
def test_order_datasets(tmp_path, name, source):
    info = fx.build_order(tmp_path / "raw", source)
    ds = convert(name, tmp_path / "raw", tmp_path / "out", seed=5)
    assert len(ds.samples) == 2 and len(ds.aro) == 5
    first = Path(info["entries"][0]["image"]).stem
    rows = ds.aro[ds.aro["sample_id"] == first]
    assert list(rows["caption"]) == ["a man riding a wave on top of a surfboard",
                                     "a large red bus parked next to a white building",
                                     "two dogs play with a frisbee in the green grass"]
    for _, r in ds.aro.iterrows():
        negs = json.loads(r["negatives"])
        assert len(negs) == 4 and r["kind"] == "order"
        assert all(Counter(aro.tokenize(n)) == Counter(aro.tokenize(r["caption"])) for n in negs)
    ds.load_image(first)
    again = convert(name, tmp_path / "raw", tmp_path / "out2", seed=5)
    other = convert(name, tmp_path / "raw", tmp_path / "out3", seed=6)
    assert list(again.aro["negatives"]) == list(ds.aro["negatives"])
    assert list(other.aro["negatives"]) != list(ds.aro["negatives"])


def test_order_keeps_identical_perturbations_and_drops_empty_captions(tmp_path, caplog):
    import logging

    info = fx.build_order(tmp_path / "raw", "coco")
    info["entries"][1]["caption"] = ["Dogs!", "...", "Two dogs."]
    info["json"].write_text(json.dumps(info["entries"]))
    with caplog.at_level(logging.INFO, logger="difflens.data.aro"):
        ds = convert("aro_coco_order", tmp_path / "raw", tmp_path / "out", seed=3)
    assert len(ds.aro) == 5  # 3 + 2: the caption "..." is empty once cleaned
    assert list(ds.aro["case"])[3:] == ["COCO_val2014_000000000002-0", "COCO_val2014_000000000002-2"]
    assert json.loads(ds.aro["negatives"].iloc[3]) == ["dogs"] * 4  # nothing to reorder: four ties, kept
    same = sum(n == r.caption for r in ds.aro.itertuples() for n in json.loads(r.negatives))
    messages = [r.getMessage() for r in caplog.records if r.name == "difflens.data.aro"]
    assert "aro_coco_order: dropped 1 caption(s) with no words left after cleaning" in messages
    assert f"aro_coco_order: {same} of 20 perturbations equal their caption (kept, as ARO keeps them: each ties " \
           "with its caption)" in messages and same >= 4


def test_order_missing_image(tmp_path):
    info = fx.build_order(tmp_path / "raw", "coco")
    (tmp_path / "raw" / info["entries"][1]["image"]).unlink()
    with pytest.raises(DatasetError, match=r"coco_karpathy_test\.json: entry 1: sample 'COCO_val2014_000000000002'"):
        convert("aro_coco_order", tmp_path / "raw", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- COCO

def test_rle_string_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.integers(0, 3000, size=int(rng.integers(1, 30))).tolist()
        assert coco.rle_string_to_counts(fx.rle_counts_to_string(counts)) == counts
    mask = rng.random((7, 9)) > 0.5
    assert (coco.rle_to_mask(fx.mask_to_rle_counts(mask), 7, 9) == mask).all()
    with pytest.raises(ValueError, match="sum"):
        coco.rle_to_mask([3, 4], 3, 3)


def test_polygon_rasterisation_matches_pixel_centres():
    rect = coco.polygons_to_mask([[2, 3, 10, 3, 10, 8, 2, 8]], 12, 14)
    expected = np.zeros((12, 14), bool)
    expected[3:8, 2:10] = True
    assert (rect == expected).all()
    tri = coco.polygons_to_mask([[0, 0, 12, 0, 0, 12]], 12, 12)
    assert tri.sum() == 66  # pycocotools' count for the area-72 triangle (the old PIL rasteriser: within 6 of 72)
    assert tri[0, 0] and tri[0, 10] and not tri[11, 11]
    with pytest.raises(ValueError, match="flat list of x, y pairs, got 5"):
        coco.polygons_to_mask([[1, 2, 3, 4, 5]], 12, 12)
    assert not coco.polygons_to_mask([[1, 1, 4, 1]], 12, 12).any()  # no pixels (pycocotools alone: a box)


def _coco_api(images: list[dict], annotations: list[dict]):
    """The official COCO API (pycocotools.coco.COCO) over in-memory annotations."""
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = {"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}
    api.createIndex()
    return api


def test_masks_equal_the_coco_api_ann_to_mask(tmp_path):
    """Polygons (fractional, several parts, one degenerate), uncompressed (iscrowd) and compressed RLE: each mask
    is the COCO API's own annToMask, bit for bit."""
    fx.build_coco2017(tmp_path / "raw")
    data = json.loads((tmp_path / "raw" / "annotations" / "instances_val2017.json").read_text())
    rng = np.random.default_rng(0)

    def polygon():
        n = int(rng.integers(3, 9))
        return np.stack([rng.random(n) * fx.W, rng.random(n) * fx.H], axis=1).round(2).ravel().tolist()

    extra = [{"id": 900 + k, "image_id": 1, "category_id": 1, "iscrowd": 0,
              "segmentation": [polygon() for _ in range(int(rng.integers(1, 3)))]} for k in range(20)]
    api = _coco_api(data["images"], data["annotations"] + extra)
    for ann in data["annotations"] + extra:
        info = api.imgs[ann["image_id"]]
        ours = coco.segmentation_to_mask(ann["segmentation"], info["height"], info["width"])
        assert ours.dtype == bool and (ours == api.annToMask(ann).astype(bool)).all(), ann["id"]
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    assert isinstance(crowd["segmentation"]["counts"], list)  # the iscrowd one is uncompressed RLE
    assert (coco.segmentation_to_mask(crowd["segmentation"], fx.H, fx.W) == fx.coco_masks()["blob"]).all()
    compressed = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict)
                      and isinstance(a["segmentation"]["counts"], str))
    assert (coco.segmentation_to_mask(compressed["segmentation"], fx.H, fx.W) == fx.coco_masks()["cat"]).all()


def test_bad_rle_is_refused_before_pycocotools_decodes_it():
    for counts in ([3, 4], [3, 7], [], [-1, 10]):  # too short (pycocotools leaves the rest undefined), too long
        with pytest.raises(ValueError, match="RLE runs sum to"):
            coco.rle_to_mask(counts, 3, 3)
    with pytest.raises(ValueError, match="truncated RLE string"):
        coco.rle_to_mask("3" + chr(48 + 0x20), 3, 3)
    with pytest.raises(ValueError, match="invalid RLE character"):
        coco.rle_to_mask("3~", 3, 3)
    assert (coco.rle_to_mask(fx.rle_counts_to_string([3, 4, 2]), 3, 3).ravel(order="F") ==
            [0, 0, 0, 1, 1, 1, 1, 0, 0]).all()


def test_coco_it(tmp_path):
    info = fx.build_coco2017(tmp_path / "raw")
    ds = convert("coco_it", tmp_path / "raw", tmp_path / "out")
    w = ds.words
    got = sorted(zip(w["sample_id"], w["word"], w["caption"]))
    assert got == [("000000000001", "cat", "A dog sits next to a cat."),
                   ("000000000001", "dog", "A dog sits next to a cat."),  # "hotdog" in caption 1 is no match
                   ("000000000002", "hot dog", "A person holds a hot dog while walking"),
                   ("000000000002", "person", "A person holds a hot dog while walking"),
                   ("000000000003", "dogs", "Three dogs running through the grass and mud."),
                   ("000000000005", "cat", "A dog chasing a cat")]  # dog named but absent: no row
    row = w[(w["sample_id"] == "000000000002") & (w["word"] == "hot dog")].iloc[0]
    assert row["context"] == "A person holds a while walking" and row["category"] == "hot dog"
    dog = w[(w["sample_id"] == "000000000001") & (w["word"] == "dog")].iloc[0]
    assert dog["context"] == "A sits next to a cat."
    m = info["masks"]
    assert (ds.object_mask("000000000001", dog["objects"]) == (m["rect"] | m["blob"])).all()
    cat = w[(w["sample_id"] == "000000000001") & (w["word"] == "cat")].iloc[0]
    assert (ds.object_mask("000000000001", cat["objects"]) == m["cat"]).all()
    objs = ds.objects[ds.objects["sample_id"] == "000000000001"]
    assert list(objs["name"]) == ["dog", "dog", "cat"] and list(objs["iscrowd"]) == [0, 1, 0]
    hot = ds.object_mask("000000000002", row["objects"])
    assert hot.sum() == 50 and hot[10:15, 10:20].all()  # the degenerate 2-point polygon adds nothing
    assert set(ds.samples["sample_id"]) == {"000000000001", "000000000002", "000000000003", "000000000005"}
    assert ds.load_image("000000000003").size == (fx.W, fx.H)
    every = convert("coco_it", tmp_path / "raw", tmp_path / "out2", one_caption_per_pair=False)
    assert len(every.words) == len(w) + 3  # image 1 caption 3: "dogs", "cat"; image 2 caption 2: "people"


def test_coco100_it(tmp_path):
    fx.build_coco2017(tmp_path / "raw")
    ds = convert("coco100_it", tmp_path / "raw", tmp_path / "out", categories=["dog", "cat"], n_images=2,
                 link="copy")
    assert Counter(ds.words["category"]) == {"dog": 2, "cat": 2}
    assert ds.words.groupby("category")["sample_id"].nunique().min() == 2
    assert all(ds.object_mask(r.sample_id, r.objects).any() for r in ds.words.itertuples())
    rnd = convert("coco100_it", tmp_path / "raw", tmp_path / "out2", seed=3, categories="random", n_categories=1,
                  n_images=1)
    assert len(rnd.words) == 1
    with pytest.raises(DatasetError, match=r"fewer than 2 COCO-IT images: \{'person': 1\}"):
        convert("coco100_it", tmp_path / "raw", tmp_path / "out3", categories=["dog", "person"], n_images=2)
    with pytest.raises(DatasetError, match="unknown category 'airplane'"):
        convert("coco100_it", tmp_path / "raw", tmp_path / "out3")  # the paper's ten are not in the fixture
    with pytest.raises(DatasetError, match="unknown category 'unicorn'"):
        convert("coco100_it", tmp_path / "raw", tmp_path / "out4", categories=["unicorn"], n_images=1)


def test_coco_wl(tmp_path):
    fx.build_coco2017(tmp_path / "raw")
    words = {"verb": ["holds", "running", "sits"], "number": ["two", "three"], "preposition": ["next to"],
             "conjunction": ["and", "while"]}
    ds = convert("coco_wl", tmp_path / "raw", tmp_path / "out", seed=1, words=words, n_per_word_class=2)
    w = ds.words
    assert Counter(w["word_class"]) == {"verb": 2, "number": 2, "preposition": 2, "conjunction": 2}
    assert set(w[w["word_class"] == "verb"]["word"]) == {"holds", "running"}  # round-robin over the words
    assert (w["objects"] == "").all() and ds.objects is None
    for r in w.itertuples():
        assert r.word.lower() in r.caption.lower() and r.word.lower() not in r.context.lower().split()
    nt = w[w["word"] == "next to"]
    assert set(nt["context"]) == {"A dog sits a cat.", "A puppy in the grass his toy."}
    again = convert("coco_wl", tmp_path / "raw", tmp_path / "out2", seed=1, words=words, n_per_word_class=2)
    assert again.words.equals(w)


def test_coco_malformed_segmentation_and_ids(tmp_path):
    fx.build_coco2017(tmp_path / "raw")
    path = tmp_path / "raw" / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5]]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val2017\.json: annotation 11 \(image 1\): bad segmentation"):
        convert("coco_it", tmp_path / "raw", tmp_path / "out")
    data["annotations"][0]["segmentation"] = {"counts": [600], "size": [30, 20]}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotation 11 .*RLE size \[30, 20\] differs"):
        convert("coco_it", tmp_path / "raw", tmp_path / "out")
    data["annotations"][0]["image_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotation 11: unknown image_id 999"):
        convert("coco_it", tmp_path / "raw", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- Snakemake scripts

def _run_script(script: str, **smk) -> None:
    fake = SimpleNamespace(**smk)
    saved = sys.stderr
    try:
        runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": fake}, run_name="__main__")
    finally:
        if sys.stderr is not saved:
            sys.stderr.close()
        sys.stderr = saved


def test_download_and_prepare_scripts(tmp_path, monkeypatch):
    raw = tmp_path / "results" / "raw" / "caltech101"
    fx.build_caltech(raw)
    fake = types.ModuleType("torchvision.datasets")
    fake.Caltech101 = lambda **kw: None
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake)
    _run_script("download_dataset.py", wildcards=SimpleNamespace(raw="caltech101"), output=[str(raw / ".done")],
                log=[str(tmp_path / "dl.log")], params=SimpleNamespace(options={}))
    assert json.loads((raw / ".done").read_text())["raw"] == "caltech101"
    out = tmp_path / "results" / "data" / "caltech101" / "dataset.json"
    _run_script("prepare_dataset.py", wildcards=SimpleNamespace(dataset="caltech101"), input=[str(raw / ".done")],
                output=[str(out)], log=[str(tmp_path / "conv.log")],
                params=SimpleNamespace(source="caltech101", raw=str(raw), seed=4,
                                       params={"fractions": [0.5, 0.25, 0.25]}))
    ds = Dataset.load(out.parent)
    assert len(ds.samples) == 36 and "caltech101" in (tmp_path / "conv.log").read_text()
    assert ds.samples["split"].value_counts()["train"] == 18
