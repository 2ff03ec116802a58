"""Science of steering k-SAE latents on the shipped shapes model, held against the same steering of an untrained
SAE's latents (chosen the same way, by their AUROC for each colour), at three SAE training seeds.

The science run of conftest.py (3,000 images), pooled features of up_blocks.1 at t = 25 (the demo's layer and
timestep); the demo's SAE settings (n = d latents, k 16, 500 steps). For each colour the latent of highest AUROC for
``has_<colour>`` on the train images is steered on the first 32 test images, ODE-inverted (20 DDIM steps, empty
prompt), with ``add`` at strengths 8, 16 and 32 (uniform over the map: the heat map spreads the edit over the
positions the latent already responds to, and a colour latent responds little on an object of another colour) and
``ablate``. The attributes of every regenerated image are read back by the renderer's palette and geometry
(``data.shapes.read_objects``).

The issue's bars and what was measured (every number printed; pytest -s shows them):

* "the best colour latent turns the canonical object that colour in >= 80% of images with <= 10% off-target
  changes": **not met** for any colour at any seed. The trained latents do recolour the object more often than the
  untrained control's (each colour's best success rate, averaged over the colours: 0.31, 0.56, 0.66 at seeds 0-2
  against 0.13, 0.44, 0.19; single colours from 0.16 to 1.00, varying with the seed), but the pooled latent's direction,
  added over the whole map, paints the colour everywhere: blobs of it appear beside the objects (count changes) and
  the other object changes shape, so the off-target rate at the best strength is 0.69-1.00. A pooled latent reads "the
  image holds red"; moving along it asks the model for more red in the image, not for this object in red.
* "ablating it lowers that colour's presence": holds only weakly: the ablated images never hold more of the colour,
  but the change is small (a pooled code value spread over 64 positions), and the untrained control's ablations do as
  little.
* "the correlation of its change map with the colour word's CMI map has a confidence interval above 0": holds at
  every colour and seed, and **also for the untrained control**: any edit of this layer changes the image where the
  objects are, and the colour word's CMI lies on the objects, so the interval above 0 does not show that the latent
  carries the word. The control is what makes this visible.
"""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import load_shipped_shapes
from difflens.data.common import Dataset
from difflens.data.shapes import COLOURS
from difflens.info.estimators import sampler_for
from difflens.sae.data import load_vectors
from difflens.sae.model import SAEConfig
from difflens.sae.train import SAETrainSettings, initial_sae, train_sae
from difflens.steer.choose import edits_for, matched_latents
from difflens.steer.run import run_steering

pytestmark = [pytest.mark.xdist_group("science_store"), pytest.mark.science]

LAYER, T, SEEDS = "up_blocks.1", 25, (0, 1, 2)
SETTINGS = SAETrainSettings(steps=500, batch_size=512, lr=3e-3, aux_coef=1 / 32, dead_steps=40)
STRENGTHS = [8.0, 16.0, 32.0]
STEER = dict(sources=["inverted"], steps=20, solver="ddim", t_range=[0, 999], prompt="empty", guidance=1.0,
             weighting="uniform", move_px=2.0, n_boot=300, batch_size=64)
ESTIMATOR = dict(loc=0.0, scale=2.0, clip=3.0, stratified=True, n_draws=16, batch_size=256)


def colour_latents(sae, x, rows) -> pd.DataFrame:
    """The latent of highest AUROC for each colour's presence on the train images (``steer.choose.matched_latents``,
    which picks the control's latents in the pipeline)."""
    wanted = pd.DataFrame({"latent": -1, "word": list(COLOURS), "attribute": [f"has_{c}=1" for c in COLOURS]})
    return matched_latents(sae, x, rows, 1, wanted).drop(columns="matches")


@pytest.fixture(scope="module")
def steered(science_store):
    """{(which, seed): (chosen, effects, correlations)} for the trained SAE and its untrained control."""
    model = load_shipped_shapes()
    ds = Dataset.load(science_store.results.parent / "data")
    images = ds.split("test").head(32).reset_index(drop=True)
    x, rows, _ = load_vectors(science_store, "shapes", "shapes", LAYER, T, input="pooled", split="train")
    config = SAEConfig(d=x.shape[1], n_latents=x.shape[1], k=16)
    out = {}
    for seed in SEEDS:
        trained, _ = train_sae(x, config, SAETrainSettings(**{**SETTINGS.__dict__, "seed": seed}), device="cpu",
                               progress=False)
        for which, sae in (("trained", trained), ("untrained", initial_sae(x, config, seed)[0])):
            chosen = colour_latents(sae, x, rows)
            edits = edits_for(list(chosen["latent"]), ["add", "ablate"], STRENGTHS, {})
            got = run_steering(model, sae, ds, images, chosen, edits, layer=LAYER, input="pooled", timestep=T,
                               cfg=STEER, sampler=sampler_for(ESTIMATOR, model), n_draws=ESTIMATOR["n_draws"],
                               seed=seed, progress=False)
            out[which, seed] = (chosen, got["effects"], got["correlations"])
            shown = got["effects"][["word", "edit", "n_eligible", "success_rate", "off_target_rate", "count_rate",
                                     "other_rate", "position_rate", "presence_before", "presence_after"]]
            print(f"\n{which} SAE, seed {seed}: latents {dict(zip(chosen['word'], chosen['latent']))}, AUROC "
                  f"{dict(zip(chosen['word'], chosen['auroc'].round(3)))}\n{shown.round(3).to_string(index=False)}")
    return out


def best(effects: pd.DataFrame) -> pd.DataFrame:
    """Per colour word, the add edit of highest success rate (the first such strength)."""
    adds = effects[effects["kind"] == "add"]
    return adds.loc[adds.groupby("word", sort=False)["success_rate"].idxmax()].set_index("word")


def test_trained_colour_latents_recolour_the_object_where_untrained_ones_do_not(steered):
    """The mean over colours of each colour's best success rate, trained against untrained, at every seed."""
    for seed in SEEDS:
        trained, control = best(steered["trained", seed][1]), best(steered["untrained", seed][1])
        print(f"seed {seed}: best success per colour, trained {trained['success_rate'].round(2).to_dict()}, "
              f"untrained {control['success_rate'].round(2).to_dict()}")
        assert trained["success_rate"].mean() >= control["success_rate"].mean() + 0.1


def test_the_issues_specificity_bar_is_not_met(steered):
    """A finding (module docstring): no colour's best latent reaches >= 80% success with <= 10% off-target changes
    at any strength and seed; were it met, this test fails and the docs must change."""
    for seed in SEEDS:
        adds = steered["trained", seed][1].query("kind == 'add'")
        met = adds[(adds["success_rate"] >= 0.8) & (adds["off_target_rate"] <= 0.1)]
        top = best(steered["trained", seed][1])
        print(f"seed {seed}: at each colour's best strength, success / off-target "
              f"{ {w: (round(r.success_rate, 2), round(r.off_target_rate, 2)) for w, r in top.iterrows()} }")
        assert met.empty, met


def test_ablation_never_adds_the_colour(steered):
    """Weak (module docstring): ablating each colour latent leaves no more of the colour than there was."""
    for seed in SEEDS:
        for which in ("trained", "untrained"):
            ablate = steered[which, seed][1].query("kind == 'ablate'").set_index("word")
            print(f"{which}, seed {seed}: colour presence before -> after ablation "
                  f"{ {w: (round(r.presence_before, 4), round(r.presence_after, 4)) for w, r in ablate.iterrows()} }")
            if which == "trained":
                assert (ablate["presence_after"] <= ablate["presence_before"] + 1e-3).all()


def test_the_change_follows_the_words_cmi_for_trained_and_untrained_latents_alike(steered):
    """The pixel-level correlation of the change with the colour word's CMI map at each colour's best strength: its
    95% interval is above 0 for the trained latents, and for the untrained control's too (module docstring)."""
    for seed in SEEDS:
        for which in ("trained", "untrained"):
            _, effects, corr = steered[which, seed]
            top = best(effects)
            rows = corr[(corr["predictor"] == "cmi") & (corr["level"] == "pixel")].set_index(["word", "edit"])
            picked = rows.loc[[(w, r.edit) for w, r in top.iterrows()]]
            print(f"{which}, seed {seed}: r(change, CMI) pixel level "
                  f"{ {w: (round(r.pearson, 2), round(r.ci_low, 2)) for (w, _), r in picked.iterrows()} }")
            assert (picked["ci_low"] > 0).all()
