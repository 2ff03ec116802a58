"""Steering k-SAE latents (difflens.steer): the SAE spliced into the denoiser is exact where the edit is empty, on the
shapes model, a tiny SD and a tiny DiT, for pooled and spatial SAEs; the edits do what they say to the code; the
timestep range, latent choice, captions for the CMI map and the effect measures (on rendered shapes scenes)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import load_shipped_shapes, make_shapes_world
from difflens.data.shapes import ShapesConfig, canonical_object, render, sample_scene
from difflens.models import load_model
from difflens.sae.model import KSAE, SAEConfig
from difflens.steer.choose import caption_naming, choose_latents, edits_for, word_column, word_of
from difflens.steer.effects import attribute_effects, rates
from difflens.steer.generate import regenerate, segments, starting_points
from difflens.steer.run import require_steps
from difflens.steer.splice import Edit, SteerError, edit_delta, latent_code, latent_codes, position_weights, spliced
from tiny_pipelines import build_tiny_dit, build_tiny_sd

LAYERS = {"shapes": "up_blocks.1", "sd": "up_blocks.0", "dit": "transformer_blocks.1"}
#: a UNet down block returns (map, skips) and hands the map on as its last skip too: spliced in place, both change
CASES = {**LAYERS, "shapes down block": "down_blocks.1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from difflens.data.shapes import CLASSES

    tmp = tmp_path_factory.mktemp("steer-models")
    sd = load_model("sd", str(build_tiny_sd(tmp / "sd")), dtype="float32", device="cpu", local_files_only=True)
    dit = load_model("dit", str(build_tiny_dit(tmp / "dit", CLASSES)), dtype="float32", device="cpu")
    return {"shapes": load_shipped_shapes(), "sd": sd, "dit": dit}


def inputs(model, seed: int = 0):
    """A batch of 3 noisy latents at t = 400 and the empty prompt's condition."""
    g = torch.Generator().manual_seed(seed)
    shape = model.encode_images(torch.zeros(1, 3, model.resolution, model.resolution)).shape[1:]
    x = torch.randn(3, *shape, generator=g)
    return x, torch.full((3,), 400, dtype=torch.long), model.encode_text([""] * 3)


def sae_for(model, layer: str, seed: int = 0) -> KSAE:
    """A random (untrained) k-SAE as wide as the layer's maps, its input scale and b_pre set on them."""
    x, t, cond = inputs(model, seed + 1)
    maps = model.capture(x, t, cond, [layer])[layer].float()
    c = maps.shape[1]
    sae = KSAE(SAEConfig(d=c, n_latents=2 * c, k=4), generator=torch.Generator().manual_seed(seed))
    sae.init_from_sample(maps.flatten(2).transpose(1, 2).reshape(-1, c))
    return sae


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("input", ["pooled", "spatial"])
def test_an_empty_edit_leaves_the_denoiser_exactly_as_it_was(models, case, input):
    kind, layer = case.split()[0], CASES[case]
    model = models[kind]
    sae = sae_for(model, layer)
    x, t, cond = inputs(model)
    plain = model.denoise(x, t, cond)
    with spliced(model, sae, layer, input) as splice:
        for edit in (Edit(0, "add", 0.0), Edit(1, "add", 0.0)):
            splice.edit = edit
            assert torch.equal(model.denoise(x, t, cond), plain), (kind, input, edit)
        assert splice.calls == 0
        splice.edit = Edit(0, "add", 3.0)  # a real edit changes the output: the test above can fail
        edited = model.denoise(x, t, cond)
        assert splice.calls == 1 and not torch.allclose(edited, plain)
        splice.edit = None
        assert torch.equal(model.denoise(x, t, cond), plain)
    assert torch.equal(model.denoise(x, t, cond), plain)  # the hook is gone


@pytest.mark.parametrize("input", ["pooled", "spatial"])
def test_the_spliced_activation_is_the_edited_decode_plus_the_reconstruction_error(models, input):
    model, layer = models["shapes"], LAYERS["shapes"]
    sae = sae_for(model, layer, seed=3)
    x, t, cond = inputs(model, 5)
    maps = model.capture(x, t, cond, [layer])[layer].float()
    b, c, h, w = maps.shape
    vectors = maps.flatten(2).transpose(1, 2)  # (b, n, C)
    rows = vectors.reshape(-1, c) if input == "spatial" else vectors.mean(1)
    code = sae.encode(rows)
    j = int(code.indices[0])  # active in the first row
    for edit in (Edit(j, "ablate"), Edit(j, "clamp", 2.5), Edit(j, "add", 1.5)):
        dense = code.dense(sae.config.n_latents)
        z = dense[:, j].clone()
        dense[:, j] = edit.target(z)
        assert torch.allclose(latent_code(sae, rows, j), z)
        other = (j + 1) % sae.config.n_latents
        both = latent_codes(sae, rows, [j, other])
        assert torch.equal(both[:, 0], z) and torch.equal(both[:, 1], dense[:, other])
        explicit = sae.decode_scaled(type(code)(*sparse_of(dense))) * sae.input_scale + (rows - sae.decode(code))
        new = maps + edit_delta(sae, maps, edit, input, "uniform")
        got = new.flatten(2).transpose(1, 2)
        got = got.reshape(-1, c) if input == "spatial" else got.mean(1)
        assert torch.allclose(got, explicit, atol=1e-4 * float(rows.abs().max())), edit.label
    # the edited latent now reads as its target in the spatial code (the other latents may move within TopK)
    if input == "spatial":
        new = maps + edit_delta(sae, maps, Edit(j, "add", 50.0), input)
        assert (latent_code(sae, new.flatten(2).transpose(1, 2).reshape(-1, c), j) > 0).all()


def sparse_of(dense: torch.Tensor):
    rows, cols = dense.nonzero(as_tuple=True)
    offsets = torch.zeros(len(dense) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=len(dense)), 0)
    return cols, dense[rows, cols], offsets


def test_heat_weights_have_mean_one_and_follow_the_latents_response(models):
    model, layer = models["shapes"], LAYERS["shapes"]
    sae = sae_for(model, layer)
    x, t, cond = inputs(model)
    maps = model.capture(x, t, cond, [layer])[layer].float()
    vectors = maps.flatten(2).transpose(1, 2)
    for j in range(4):
        w = position_weights(sae, vectors, j, "heat")
        assert torch.allclose(w.mean(1), torch.ones(len(w)), atol=1e-5)
        heat = torch.relu(sae.pre_activations(vectors.reshape(-1, vectors.shape[-1]))[:, j]).view(w.shape)
        live = heat.sum(1) > 0
        assert torch.allclose(w[live] * heat[live].mean(1, keepdim=True), heat[live], atol=1e-4)
    assert torch.equal(position_weights(sae, vectors, 0, "uniform"), torch.ones(vectors.shape[:2]))
    with pytest.raises(SteerError, match="steer.weighting 'hot'"):
        position_weights(sae, vectors, 0, "hot")


def test_edits_are_on_only_at_the_steps_in_the_timestep_range(models):
    grid = torch.tensor([999, 800, 600, 400, 200, 0])
    assert segments(grid, (0, 999)) == [(0, 5, True)]
    assert segments(grid, (300, 700)) == [(0, 2, False), (2, 4, True), (4, 5, False)]
    model, layer = models["shapes"], LAYERS["shapes"]
    sae = sae_for(model, layer)
    x0 = inputs(model)[0][:2]
    start, grid = starting_points(model, "inverted", x0, ["a", "b"], ["", ""], steps=4, seed=0)
    assert grid[0] > grid[-1] and int(grid[-1]) == 0
    with spliced(model, sae, layer, "pooled") as splice:
        plain = regenerate(model, start, ["", ""], grid, splice=splice)
        splice.edit = Edit(0, "add", 4.0)
        outside = regenerate(model, start, ["", ""], grid, splice=splice, t_range=(2000, 3000))
        assert torch.equal(outside, plain) and splice.calls == 0
        inside = regenerate(model, start, ["", ""], grid, splice=splice, t_range=(500, 999))
        assert splice.calls == int(((grid[:-1] >= 500) & (grid[:-1] <= 999)).sum()) * 1
        assert not torch.allclose(inside, plain)
    with pytest.raises(SteerError, match=r"steer.t_range \[0, 10\]: no step .* starts inside it"):
        require_steps(grid, [0, 10])
    noise, _ = starting_points(model, "noise", x0, ["a", "b"], ["", ""], steps=4, seed=0)
    again, _ = starting_points(model, "noise", x0[[1, 0]], ["b", "a"], ["", ""], steps=4, seed=0)
    assert torch.equal(noise[[1, 0]], again)  # seeded per sample id, not per batch position


def test_latents_are_chosen_by_auroc_one_per_word():
    table = pd.DataFrame({"latent": [0, 1, 2, 3, 4], "auroc": [0.7, 0.99, 0.95, 0.9, 0.6],
                          "best_attribute": ["colour=red", "has_blue=1", "has_blue=1", "has_red=1", "n_objects=1"]})
    assert word_of("has_red=1") == "red" and word_of("colour=red") == "red" and word_of("label=red circle") == \
        "red circle" and word_of("n_objects=1") == "1"
    chosen = choose_latents(table, 3, ["red", "blue"])
    assert list(chosen["latent"]) == [1, 3] and list(chosen["word"]) == ["blue", "red"]
    assert list(choose_latents(table, 1, [])["latent"]) == [1]
    with pytest.raises(SteerError, match="steer.words \\['green'\\].*has_blue=1"):
        choose_latents(table, 3, ["green"])
    edits = edits_for([1, 3], ["add", "ablate", "clamp"], [2.0, -1.0], {(1, 0.9): 5.0, (3, 0.9): 6.0})
    assert [e.label for e in edits] == ["add=+2", "add=-1", "ablate", "clamp@q0.9", "add=+2", "add=-1", "ablate",
                                        "clamp@q0.9"]
    assert [e.value for e in edits if e.kind == "clamp"] == [5.0, 6.0] and Edit(1, "clamp", 2.5).label == "clamp=2.5"
    with pytest.raises(SteerError, match="steer.edits: \\['swap'\\]"):
        edits_for([1], ["swap"], [], {})


def test_the_cmi_caption_names_the_latents_word(tmp_path_factory):
    world = make_shapes_world(tmp_path_factory, "steer-world", 12)
    rows = world.samples
    assert word_column(rows, "red", "has_red=1") == "colour" and word_column(rows, "purple", "x=1") is None
    for r in rows.to_dict("records"):
        caption = caption_naming(r, "red", "colour")
        if "red" in r["caption"].split():
            assert caption == r["caption"]
        else:
            assert caption == r["caption"].replace(r["colour"], "red") and "red" in caption.split()
    assert caption_naming({"caption": ""}, "red", "colour") is None


def test_effects_read_a_recoloured_object_as_a_success_without_off_target_changes():
    cfg = ShapesConfig()
    before, after, moved = [], [], []
    for i in range(40):
        scene = sample_scene(cfg.seed, i, cfg)
        before.append(render(scene, 32)[0])
        canon = canonical_object(scene)
        recoloured = {**scene, "objects": [{**o, "colour": "red"} if o is canon else o for o in scene["objects"]]}
        after.append(render(recoloured, 32)[0])
        shifted = {**scene, "objects": [{**o, "cx": o["cx"] + 4} if o is canon else o for o in scene["objects"]]}
        moved.append(render(shifted, 32)[0])
    items = attribute_effects(before, after, "red", move_px=2.0)
    eligible = items[items["eligible"]]
    assert len(eligible) >= 20 and eligible["success"].mean() >= 0.9  # the reader's canonical object: ~97% agree
    assert items["changed_position"].sum() == 0 and items["changed_count"].sum() <= 2
    assert (items["presence_after"] >= items["presence_before"]).all()
    control = attribute_effects(before, before, "red", move_px=2.0)
    assert not control["success"][control["eligible"]].any() and not control["off_target"].any()
    shift = attribute_effects(before, moved, "red", move_px=2.0)
    assert shift["changed_position"].mean() > 0.5
    table = rates(items.assign(latent=7), ["latent"])
    assert table.loc[0, "n_eligible"] == len(eligible) and table.loc[0, "success_rate"] == eligible["success"].mean()
