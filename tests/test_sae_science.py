"""Science of the k-SAE stage on the shipped shapes model: the science run of conftest.py (3,000 images, 2,400 of
them in the train split), features at t = 25. Every number asserted is printed (pytest -s shows them).

The SAEs are the demo's (config.yaml, run ``shapes``): n = d latents, k = 16, TopK, AuxK 1/32, 500 steps of 512
vectors, lr 3e-3, seed 0. They are read on the 2,400 train images (``sae.split: train``): top-10 sets drawn from the
300 test images are not extreme exemplars, and with them no layer's mean purity cleared the random 95th percentile.

Asserted:

* every layer's pooled-input SAE reconstructs its val vectors with FVU <= 0.2, and at most 5% of its latents never
  fire on the train split;
* AuxK keeps latents alive where they die: an overcomplete SAE (4 d latents, k = 8, 600 steps) on mid_block
  loses more than 10% of them without AuxK and at most 5% with it;
* at the layer of highest mean top-10 purity, that purity is above the 95th percentile of random sets of 10 images
  and sigma_label below their 5th percentile;
* for every colour, some pooled-input latent (any layer) fires for that colour's presence with AUROC >= 0.9;
* shape presence (images scored by the maximum of a latent over the map for spatial input): for square and
  triangle, the best spatial-input latent (up_blocks.0 or up_blocks.1) beats the best pooled-input latent of any
  layer. Circle is printed, not asserted: no latent of either input reads it above 0.7, nor does a linear probe on
  the pooled vectors (test accuracy 0.70-0.72 against 0.61 for the majority), so the model's features barely tell
  circles from squares at 32 pixels.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import SCIENCE_LAYERS as LAYERS
from difflens.data.shapes import COLOURS, SHAPES
from difflens.sae.analysis import (attribute_auroc, image_scores, indicator_columns, live_latents, random_baseline,
                                   sigma_label)
from difflens.sae.data import load_vectors
from difflens.sae.model import SAEConfig
from difflens.sae.train import SAETrainSettings, evaluate, train_sae

#: one xdist worker (make test) builds the shared science_store fixture once and runs every module using it
pytestmark = pytest.mark.xdist_group("science_store")


T = 25
SETTINGS = SAETrainSettings(steps=500, batch_size=512, lr=3e-3, aux_coef=1 / 32, dead_steps=40, seed=0)
SPATIAL_LAYERS = ["up_blocks.0", "up_blocks.1"]
COLUMNS = [f"has_{c}" for c in COLOURS] + [f"has_{s}" for s in SHAPES]


def fit(store, layer, input, expansion=1, k=16, settings=SETTINGS):
    """A k-SAE on the train split; its train and val metrics and, read on the train images, the best AUROC per
    attribute value, sigma_label / purity and their random baseline."""
    x, rows, per_image = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="train",
                                      positions=16 if input == "spatial" else None)
    x_val, _, _ = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="val",
                               positions=16 if input == "spatial" else None)
    d = x.shape[1]
    sae, _ = train_sae(x, SAEConfig(d=d, n_latents=expansion * d, k=k), settings, device="cpu", progress=False)
    out = {"train": evaluate(sae, x), "val": evaluate(sae, x_val)}
    if input == "spatial":
        x, rows, per_image = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="train")
    scores = image_scores(sae, x, positions=per_image)
    names, indicators = indicator_columns(rows, COLUMNS)
    out["best"] = dict(zip(names, attribute_auroc(scores, indicators, live_latents(scores)).max(0).tolist()))
    labels = rows["label"].to_numpy()
    out["sigma"], out["random"] = sigma_label(scores, labels), random_baseline(labels)
    return out


@pytest.fixture(scope="module")
def runs(science_store):
    """Every fit of this module, two at a time (one torch thread each; each fit seeds its own generator)."""
    jobs = {("pooled", layer): (layer, "pooled") for layer in LAYERS}
    jobs.update({("spatial", layer): (layer, "spatial") for layer in SPATIAL_LAYERS})
    longer = SAETrainSettings(**{**SETTINGS.__dict__, "steps": 600})
    jobs["overcomplete"] = ("mid_block", "pooled", 4, 8, longer)
    jobs["overcomplete, no AuxK"] = ("mid_block", "pooled", 4, 8, SAETrainSettings(**{**longer.__dict__,
                                                                                       "aux_coef": 0.0}))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = {key: pool.submit(fit, science_store, *args) for key, args in jobs.items()}
            out = {key: f.result() for key, f in futures.items()}
    finally:
        torch.set_num_threads(before)
    for key, r in out.items():
        print(f"{key}: val FVU {r['val']['fvu']:.3f}, dead on train {r['train']['dead_fraction']:.3f}, purity "
              f"{r['sigma']['purity_mean']:.3f}, sigma_label {r['sigma']['sigma_label']:.3f}")
    return out


def test_pooled_saes_reconstruct_and_keep_their_latents(runs):
    pooled = [runs["pooled", layer] for layer in LAYERS]
    assert all(r["val"]["fvu"] <= 0.2 for r in pooled)
    assert all(r["train"]["dead_fraction"] <= 0.05 for r in pooled)


def test_auxk_keeps_latents_alive(runs):
    with_aux, without = runs["overcomplete"], runs["overcomplete, no AuxK"]
    print(f"mid_block, 4 d latents, k 8, dead on train: AuxK {with_aux['train']['dead_fraction']:.3f}, "
          f"without {without['train']['dead_fraction']:.3f}")
    assert with_aux["train"]["dead_fraction"] <= 0.05 < 0.1 < without["train"]["dead_fraction"]


def test_latents_are_purer_than_random_sets(runs):
    best = max(LAYERS, key=lambda layer: runs["pooled", layer]["sigma"]["purity_mean"])
    sig, base = runs["pooled", best]["sigma"], runs["pooled", best]["random"]
    print(f"best layer {best}: purity {sig['purity_mean']:.3f} (random p95 {base['purity']['p95']:.3f}), "
          f"sigma_label {sig['sigma_label']:.3f} (random p5 {base['sigma']['p5']:.3f})")
    assert sig["purity_mean"] > base["purity"]["p95"] and sig["sigma_label"] < base["sigma"]["p5"]


def test_every_colour_has_a_pooled_latent(runs):
    best = {c: max(runs["pooled", layer]["best"][f"has_{c}=1"] for layer in LAYERS) for c in COLOURS}
    print("best pooled AUROC per colour:", {c: round(v, 3) for c, v in best.items()})
    assert all(v >= 0.9 for v in best.values())


def test_spatial_latents_read_shape_better_than_pooled_ones(runs):
    table = {s: (max(runs["pooled", layer]["best"][f"has_{s}=1"] for layer in LAYERS),
                 max(runs["spatial", layer]["best"][f"has_{s}=1"] for layer in SPATIAL_LAYERS)) for s in SHAPES}
    print("shape presence, best AUROC (pooled any layer, spatial up_blocks.0/1):",
          {s: (round(a, 3), round(b, 3)) for s, (a, b) in table.items()})
    assert all(spatial > pooled for shape, (pooled, spatial) in table.items() if shape != "circle")
    assert max(table["circle"]) < 0.75  # the docstring's reason for leaving circle out: nothing reads it well
