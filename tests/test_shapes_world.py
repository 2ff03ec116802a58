"""The shapes world: seeded, byte-identical, internally consistent ground truth."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from difflens.data.common import Dataset, DatasetError, has_word, remove_word
from difflens.data.shapes import (ATTRIBUTES, CLASSES, COLOURS, RELATIONS, ShapesConfig, find_colours,
                                  follows_caption, generate, render, sample_scene)


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, ShapesConfig(n_images=60, seed=3), progress=False)
    return Dataset.load(root)


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    generate(tmp_path / "again", ShapesConfig(n_images=60, seed=3), progress=False)
    assert _digest(tmp_path / "again") == _digest(world.root)
    generate(tmp_path / "other", ShapesConfig(n_images=60, seed=4), progress=False)
    assert _digest(tmp_path / "other") != _digest(world.root)


def test_sample_depends_only_on_seed_and_index():
    small, big = ShapesConfig(n_images=5), ShapesConfig(n_images=500)
    assert sample_scene(0, 4, small) == sample_scene(0, 4, big)


def test_tables_are_consistent(world):
    s = world.samples
    assert set(s["split"]) == {"train", "val", "test"} and (s["split"] == "train").mean() == pytest.approx(0.8, abs=.05)
    assert world.classes == CLASSES and len(CLASSES) == 12
    for row in s.itertuples():
        objs = world.objects[world.objects["sample_id"] == row.sample_id]
        assert len(objs) == row.n_objects
        first = objs[objs["object"] == 0].iloc[0]
        assert row.caption.startswith(f"a {first.colour} {first['shape']}")
        # the label is what the image shows: the single object, else the left (horizontal) / upper (vertical) one
        key = "cx" if row.axis == "horizontal" else "cy"
        canon = objs.sort_values(key).iloc[0] if row.n_objects == 2 else first
        assert row.label_name == f"{canon.colour} {canon['shape']}" and CLASSES[row.label] == row.label_name
        assert Image.open(world.root / row.image).size == (32, 32)


def test_attribute_columns(world):
    """The attribute columns, pinned: listed in dataset.json, consistent with the objects and with the geometry."""
    s = world.samples
    assert world.attributes == ATTRIBUTES == ["colour", "shape", "size", "n_objects", "axis", "has_red", "has_green",
                                              "has_blue", "has_yellow", "has_circle", "has_square", "has_triangle"]
    assert set(s["axis"]) == {"", "horizontal", "vertical"} and set(s["size"]) == {"small", "large"}
    assert ((s["axis"] == "") == (s["n_objects"] == 1)).all()
    for row in s.itertuples():
        objs = world.objects[world.objects["sample_id"] == row.sample_id]
        for colour in COLOURS:
            assert getattr(row, f"has_{colour}") == int(colour in set(objs["colour"]))
        for shape in ("circle", "square", "triangle"):
            assert getattr(row, f"has_{shape}") == int(shape in set(objs["shape"]))
        assert row.label_name == f"{row.colour} {row.shape}"
        assert row.axis == {"left": "horizontal", "right": "horizontal", "above": "vertical", "below": "vertical",
                            "": ""}[row.relation]
    # a pair's caption names the canonical (left / upper) object second exactly when its relation is "right" or
    # "below"; the world holds both kinds of pair
    pairs = s[s["n_objects"] == 2]
    named_second = [not c.startswith(f"a {n}") for c, n in zip(pairs["caption"], pairs["label_name"])]
    assert named_second == list(pairs["relation"].isin(["right", "below"]))
    assert 0 < sum(named_second) < len(pairs)


def test_masks_match_the_rendered_colours(world):
    for row in world.objects.head(40).itertuples():
        mask = world.object_mask(row.sample_id, [row.object])
        img = np.asarray(world.load_image(row.sample_id)).astype(int)
        inside = img[mask]
        assert mask.sum() > 10
        assert np.median(np.abs(inside - np.array(COLOURS[row.colour])).sum(1)) < 5


def test_relation_in_caption_matches_geometry(world):
    two = world.samples[world.samples["n_objects"] == 2]
    assert len(two) > 30 and set(two["relation"]) == set(RELATIONS)
    for row in two.itertuples():
        o = world.objects[world.objects["sample_id"] == row.sample_id].set_index("object")
        a, b = o.loc[0], o.loc[1]
        assert {"left": a.cx < b.cx, "right": a.cx > b.cx, "above": a.cy < b.cy, "below": a.cy > b.cy}[row.relation]
        assert a.colour != b.colour and a["shape"] != b["shape"]
        # the judge used on generated samples agrees with the ground truth
        assert follows_caption(np.asarray(world.load_image(row.sample_id)), row.caption)


def test_aro_negatives(world):
    aro = world.aro
    assert set(aro["kind"]) == {"relation", "attribute", "order"}
    for row in aro.itertuples():
        negs = json.loads(row.negatives)
        assert row.caption not in negs and len(set(negs)) == len(negs)
        for neg in negs:
            assert sorted(neg.split()) == sorted(row.caption.split())  # same words, other meaning
        if row.kind == "order":
            assert len(negs) == 4


def test_word_table_contexts_and_masks(world):
    w = world.words
    pairs = int((world.samples["n_objects"] == 2).sum())
    # each object's shape and colour word, and each pair's relation word (its mask: both objects)
    assert len(w) == 2 * len(world.objects) + pairs
    assert w["word_type"].value_counts().to_dict() == {"object": len(world.objects), "colour": len(world.objects),
                                                        "relation": pairs}
    assert set(w.loc[w["word_type"] == "relation", "objects"]) == {"0;1"}
    for row in w.head(50).itertuples():
        assert has_word(row.caption, row.word) and not has_word(row.context, row.word)
        assert len(row.context.split()) == len(row.caption.split()) - 1
        assert world.object_mask(row.sample_id, row.objects).any()


def test_remove_word_is_whole_word():
    assert remove_word("a hotdog next to a dog", "dog") == "a hotdog next to a"
    assert remove_word("A Dog, a dog-sled", "dog") == "A , a dog-sled"


def test_find_colours_on_a_rendered_scene():
    scene = {"objects": [{"colour": "red", "shape": "circle", "size": "large", "cx": 8.0, "cy": 16.0},
                         {"colour": "blue", "shape": "square", "size": "small", "cx": 24.0, "cy": 16.0}],
             "relation": "left"}
    img, masks = render(scene, 32)
    found = find_colours(img)
    assert set(found) == {"red", "blue"} and found["red"][0] == pytest.approx(8.0, abs=0.5)
    assert follows_caption(img, "a red circle to the left of a blue square")
    assert not follows_caption(img, "a red circle to the right of a blue square")
    assert not follows_caption(img, "a green circle")


def test_bad_config_and_unknown_sample(world):
    with pytest.raises(ValueError, match="shapes.image_size"):
        ShapesConfig(image_size=30)
    with pytest.raises(DatasetError, match="nope"):
        world.row("nope")
