"""Science of the k-SAE stage on the shipped shapes model, each claim held against the controls of every SAE (its
untrained state and random directions, ``difflens.sae.controls``, read by the same analysis code) at three training
seeds. The science run of conftest.py (3,000 images, 2,400 of them in the train split), features at t = 25. Every
number asserted is printed with its spread over the seeds (pytest -s shows them).

The SAEs are the demo's (config.yaml, run ``shapes``): n = d latents, k = 16, TopK, AuxK 1/32, 500 steps of 512
vectors, lr 3e-3, seeds 0, 1, 2. They are read on the 2,400 train images (``sae.split: train``).

What holds against the controls (each test states its bar and the measured values):

* every pooled-input SAE reconstructs its val vectors (FVU <= 0.2 at every seed) where its untrained control does
  not (FVU >= 0.5);
* AuxK keeps latents alive: an overcomplete SAE (4 d latents, k = 8, 600 steps) on mid_block loses at least twice
  as many latents without AuxK as with it, at every seed;
* for each colour, the best pooled latent of the trained SAE beats the untrained SAE's best: the trained SAE's worst
  seed beats the control's best seed by 0.03 or more;
* triangle presence: the best spatial-input latent beats the best pooled-input one at every seed.

What does not (findings, asserted as such or printed; docs/reference.md, "What the shapes world can show"): the
untrained SAE's top-10 sets are as pure as the trained one's, and both beat random image sets, so purity and
sigma_label cannot show here that an SAE learned anything; the untrained spatial SAE reads triangles nearly as
well; square presence is read no better by spatial latents than by pooled ones. The positive case that the control
machinery must pass is the planted dictionary of tests/test_sae_controls.py.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from conftest import SCIENCE_LAYERS as LAYERS
from difflens.data.shapes import COLOURS, SHAPES
from difflens.sae.analysis import random_baseline, read_sae, read_summary
from difflens.sae.controls import CONTROLS, control_saes
from difflens.sae.data import load_vectors
from difflens.sae.model import SAEConfig
from difflens.sae.train import SAETrainSettings, evaluate, initial_sae, train_sae

#: one xdist worker builds the shared science_store fixture once and runs every module using it
pytestmark = [pytest.mark.xdist_group("science_store"), pytest.mark.science]

T = 25
SEEDS = (0, 1, 2)
SETTINGS = SAETrainSettings(steps=500, batch_size=512, lr=3e-3, aux_coef=1 / 32, dead_steps=40)
SPATIAL_LAYERS = ["up_blocks.0", "up_blocks.1"]
COLUMNS = [f"has_{c}" for c in COLOURS] + [f"has_{s}" for s in SHAPES]
OVERCOMPLETE = SAETrainSettings(**{**SETTINGS.__dict__, "steps": 600})


def fit(store, layer, input, seed, expansion=1, k=16, settings=SETTINGS):
    """A k-SAE on the train split at ``seed``; its train and val metrics, its untrained control's val FVU, and, read
    on the train images for the SAE and each control: live latents, sigma_label, purity, best AUROC per attribute
    value; the random-image baseline."""
    positions = 16 if input == "spatial" else None
    x, rows, per_image = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="train",
                                      positions=positions)
    x_val, _, _ = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="val", positions=positions)
    config = SAEConfig(d=x.shape[1], n_latents=expansion * x.shape[1], k=k)
    settings = SAETrainSettings(**{**settings.__dict__, "seed": seed})
    sae, _ = train_sae(x, config, settings, device="cpu", progress=False)
    controls = control_saes(initial_sae(x, config, seed)[0], seed, f"{layer}/{input}")
    out = {"train": evaluate(sae, x), "val": evaluate(sae, x_val),
           "control_val_fvu": evaluate(controls["untrained"], x_val)["fvu"]}
    if input == "spatial":
        x, rows, per_image = load_vectors(store, "shapes", "shapes", layer, T, input=input, split="train")
    for name, model in {"trained": sae, **controls}.items():
        out[name] = read_summary(read_sae(model, x, rows, per_image, COLUMNS))
    out["random"] = random_baseline(rows["label"].to_numpy())
    return out


def jobs() -> dict:
    out = {}
    for seed in SEEDS:
        out.update({("pooled", layer, seed): (layer, "pooled", seed) for layer in LAYERS})
        out.update({("spatial", layer, seed): (layer, "spatial", seed) for layer in SPATIAL_LAYERS})
        out["overcomplete", "mid_block", seed] = ("mid_block", "pooled", seed, 4, 8, OVERCOMPLETE)
        out["overcomplete, no AuxK", "mid_block", seed] = ("mid_block", "pooled", seed, 4, 8,
                                                           SAETrainSettings(**{**OVERCOMPLETE.__dict__,
                                                                               "aux_coef": 0.0}))
    return out


@pytest.fixture(scope="module")
def runs(science_store):
    """Every fit of this module, two at a time (one torch thread each; each fit seeds its own generator)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = {key: pool.submit(fit, science_store, *args) for key, args in jobs().items()}
            out = {key: f.result() for key, f in futures.items()}
    finally:
        torch.set_num_threads(before)
    for key, r in out.items():
        print(f"{key}: val FVU {r['val']['fvu']:.3f} (untrained {r['control_val_fvu']:.3f}), dead on train "
              f"{r['train']['dead_fraction']:.3f}, purity " + ", ".join(
                  f"{name} {r[name]['purity']:.3f}" for name in ("trained", *CONTROLS)))
    return out


def spread(values) -> str:
    """'median [min, max]' of per-seed values."""
    v = np.asarray(values, float)
    return f"{np.median(v):.3f} [{v.min():.3f}, {v.max():.3f}]"


def test_pooled_saes_reconstruct_where_their_controls_do_not(runs):
    """Measured at seeds 0-2: val FVU 0.004-0.036 trained, 0.71-0.84 untrained, at every layer."""
    fvu = {layer: [runs["pooled", layer, s]["val"]["fvu"] for s in SEEDS] for layer in LAYERS}
    control = {layer: [runs["pooled", layer, s]["control_val_fvu"] for s in SEEDS] for layer in LAYERS}
    for layer in LAYERS:
        print(f"{layer}: val FVU {spread(fvu[layer])}, untrained {spread(control[layer])}")
    assert all(v <= 0.2 for vs in fvu.values() for v in vs)
    assert all(v >= 0.5 for vs in control.values() for v in vs)


def test_dead_latents_across_seeds(runs):
    """The demo's bar, at most 5% of latents dead on the train split, holds in the median over seeds at every layer
    but not at every seed (measured: up to 0.078 at up_blocks.1), so every seed is held to 10%. An untrained SAE
    has (almost) no dead latents either, so this bar is about training health, not about learning."""
    dead = {layer: [runs["pooled", layer, s]["train"]["dead_fraction"] for s in SEEDS] for layer in LAYERS}
    for layer in LAYERS:
        live = [runs["pooled", layer, s]["untrained"]["live_latents"] for s in SEEDS]
        print(f"{layer}: dead on train {spread(dead[layer])}; untrained live latents {spread(live)}")
    assert all(np.median(v) <= 0.05 and max(v) <= 0.1 for v in dead.values())


def test_auxk_keeps_latents_alive(runs):
    """Measured at seeds 0-2: 0.004-0.016 dead with AuxK, 0.16-0.20 without."""
    with_aux = [runs["overcomplete", "mid_block", s]["train"]["dead_fraction"] for s in SEEDS]
    without = [runs["overcomplete, no AuxK", "mid_block", s]["train"]["dead_fraction"] for s in SEEDS]
    print(f"mid_block, 4 d latents, k 8, dead on train: AuxK {spread(with_aux)}, without {spread(without)}")
    assert all(b >= 2 * a and b - a >= 0.05 for a, b in zip(with_aux, without))


def test_random_image_sets_are_no_control_for_purity(runs):
    """A finding, not a success: at every layer and seed the untrained SAE's top-10 sets are about as pure as the
    trained one's (pooled features cluster by class, so any direction finds pure sets), and both beat random image
    sets. The null used: the mean purity over the SAE's M eligible latents against the distribution of the mean of
    M random 10-image sets (``analysis.random_null``; one-sided p-value from 2,000 replicates), not the single-set
    5th-95th band, which is sqrt(M) too wide for a mean. Asserted: at the trained SAE's purest layer, at every seed,
    the trained and the untrained SAE both beat that null (p < 0.05), so "purer than random images" says nothing
    about learning; the trained-vs-untrained purity is printed (measured: trained 0.40-0.54, untrained 0.38-0.59;
    the trained SAE is not purer)."""
    for layer in LAYERS:
        r = [runs["pooled", layer, s] for s in SEEDS]
        print(f"{layer}: purity trained {spread([x['trained']['purity'] for x in r])}, untrained "
              f"{spread([x['untrained']['purity'] for x in r])}, random directions "
              f"{spread([x['random_directions']['purity'] for x in r])}; null of the mean: 95th pct "
              f"{spread([x['trained']['null_purity_mean_p95'] for x in r])}, p trained "
              f"{spread([x['trained']['null_purity_p_value'] for x in r])}, untrained "
              f"{spread([x['untrained']['null_purity_p_value'] for x in r])}; single-set p95 "
              f"{spread([x['random']['purity']['p95'] for x in r])}; sigma_label trained "
              f"{spread([x['trained']['sigma_label'] for x in r])}, untrained "
              f"{spread([x['untrained']['sigma_label'] for x in r])}")
    for s in SEEDS:
        best = max(LAYERS, key=lambda layer: runs["pooled", layer, s]["trained"]["purity"])
        r = runs["pooled", best, s]
        assert r["trained"]["null_purity_p_value"] < 0.05 and r["trained"]["better_than_random"], (s, best)
        assert r["untrained"]["null_purity_p_value"] < 0.05, (s, best)


def test_colour_latents_beat_the_untrained_sae(runs):
    """The best pooled latent (any layer) per colour: trained against untrained, per seed. Asserted: the trained SAE
    reaches 0.9 in the median over seeds, and its worst seed beats the control's best seed by 0.03 or more, so the
    two ranges over the seeds do not overlap (measured margins: red 0.094, green 0.057, blue 0.043, yellow 0.059;
    the trained SAE's own spread over seeds is up to 0.062, for green)."""
    for c in COLOURS:
        key = f"has_{c}=1"
        trained, untrained = ([max(runs["pooled", layer, s][name]["best_auroc"][key] for layer in LAYERS)
                               for s in SEEDS] for name in ("trained", "untrained"))
        diff = np.subtract(trained, untrained)
        print(f"{c}: best pooled AUROC trained {spread(trained)}, untrained {spread(untrained)}, difference "
              f"{spread(diff)}")
        assert np.median(trained) >= 0.9 and min(trained) - max(untrained) >= 0.03, c


def test_spatial_latents_read_triangles_better_than_pooled_ones(runs):
    """Triangle presence: the best spatial-input latent (up_blocks.0 or up_blocks.1; images scored by a latent's
    maximum over the map) beats the best pooled-input latent of any layer at every seed. Printed only: square
    (spatial and pooled within 0.02 of each other, and the untrained spatial SAE as good), circle (nothing reads it
    above 0.75: the model's features barely tell circles from squares at 32 pixels), and the untrained spatial SAE,
    which reads triangles nearly as well as the trained one (measured 0.69-0.79 vs 0.72-0.82)."""
    table = {}
    for shape in SHAPES:
        key = f"has_{shape}=1"
        table[shape] = {
            "pooled": [max(runs["pooled", layer, s]["trained"]["best_auroc"][key] for layer in LAYERS) for s in SEEDS],
            "spatial": [max(runs["spatial", layer, s]["trained"]["best_auroc"][key] for layer in SPATIAL_LAYERS)
                        for s in SEEDS],
            "spatial, untrained": [max(runs["spatial", layer, s]["untrained"]["best_auroc"][key]
                                       for layer in SPATIAL_LAYERS) for s in SEEDS]}
        print(f"{shape} presence, best AUROC: " + ", ".join(f"{k} {spread(v)}" for k, v in table[shape].items()))
    assert all(a > b for a, b in zip(table["triangle"]["spatial"], table["triangle"]["pooled"]))
