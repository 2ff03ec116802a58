"""The SAE controls (difflens.sae.controls): the untrained control is the trained SAE's own starting point, the
random directions are seeded unit vectors, and on a planted dictionary, the positive case, the analysis code tells a
trained SAE from both controls at every seed. Also the summary page's verdict of trained against untrained SAEs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.report.summary import control_verdict
from difflens.sae.analysis import read_sae, read_summary
from difflens.sae.controls import CONTROLS, atom_recovery, control_saes, planted_dictionary, random_directions
from difflens.sae.model import SAEConfig, SAEError
from difflens.sae.train import SAETrainSettings, evaluate, initial_sae, train_sae

SEEDS = (0, 1, 2)
N_ATOMS = 48


def test_untrained_control_is_where_training_starts(monkeypatch):
    from difflens.sae import train

    x = torch.randn(300, 16) + 2
    config = SAEConfig(d=16, n_latents=32, k=4)
    started = {}

    def recording(*args):
        sae, gen = initial_sae(*args)
        started.update({k: v.clone() for k, v in sae.state_dict().items()})
        return sae, gen

    monkeypatch.setattr(train, "initial_sae", recording)
    trained, _ = train_sae(x, config, SAETrainSettings(steps=5, batch_size=64, seed=5), device="cpu", progress=False)
    init = initial_sae(x, config, 5)[0].state_dict()
    assert started.keys() == init.keys() and all(torch.equal(started[k], init[k]) for k in init)
    assert not torch.equal(trained.W_dec, init["W_dec"])  # five steps moved it
    assert not torch.equal(initial_sae(x, config, 6)[0].W_dec, init["W_dec"])


def test_random_directions_are_seeded_unit_rows_with_the_inits_centre():
    x = torch.randn(300, 16) + 2
    init, _ = initial_sae(x, SAEConfig(d=16, n_latents=32, k=4), 0)
    a, b, c = random_directions(init, 1), random_directions(init, 1), random_directions(init, 2)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(a.encoder.weight, a.W_dec) and not a.encoder.bias.any()
    assert torch.equal(a.b_pre, init.b_pre) and torch.equal(a.input_scale, init.input_scale)
    assert not torch.equal(a.W_dec, init.W_dec)  # the init itself is left alone
    assert set(control_saes(init, 0, "key")) == set(CONTROLS)


def test_planted_dictionary_holds_its_atoms():
    x, atoms, coefficients = planted_dictionary(500, 8, 12, 3, noise=0.0, seed=0)
    assert ((coefficients > 0).sum(1) == 3).all() and coefficients[coefficients > 0].min() >= 1
    offset = x - torch.from_numpy(coefficients).float() @ atoms  # no noise: every row is the offset
    torch.testing.assert_close(offset, offset[:1].expand_as(offset))
    with pytest.raises(SAEError, match="active must be in"):
        planted_dictionary(10, 8, 12, 13)


@pytest.fixture(scope="module")
def planted(one_thread_module):
    """At each seed: a trained SAE (96 latents, k 4, 300 steps) and its two controls on 4,096 vectors of d = 32 made
    of 3 of 48 planted atoms plus noise (0.05 per coordinate), each read by the analysis code (indicator per atom,
    label = the vector's strongest atom): atom recovery, best AUROC per atom, purity; and val FVU."""
    out = {}
    for seed in SEEDS:
        x, atoms, coefficients = planted_dictionary(4096, 32, N_ATOMS, 3, noise=0.05, seed=seed)
        rows = pd.DataFrame({f"atom_{i}": (coefficients[:, i] > 0).astype(int) for i in range(N_ATOMS)})
        rows["label"] = coefficients.argmax(1)
        config = SAEConfig(d=32, n_latents=96, k=4)
        settings = SAETrainSettings(steps=300, batch_size=256, lr=3e-3, aux_coef=1 / 32, dead_steps=50, seed=seed)
        sae, _ = train_sae(x, config, settings, device="cpu", progress=False)
        models = {"trained": sae, **control_saes(initial_sae(x, config, seed)[0], seed, "planted")}
        for name, model in models.items():
            read = read_summary(read_sae(model, x, rows, 1, [f"atom_{i}" for i in range(N_ATOMS)]))
            out[name, seed] = {"atoms": float(atom_recovery(model, atoms).mean()), "purity": read["purity"],
                               "auroc": float(np.mean(list(read["best_auroc"].values()))),
                               "fvu": evaluate(model, x)["fvu"]}
    for key, r in out.items():
        print(key, {k: round(v, 3) for k, v in r.items()})
    return out


@pytest.fixture(scope="module")
def one_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trained_sae_recovers_planted_atoms_and_its_controls_do_not(planted):
    """Measured at seeds 0-2: mean best cosine 0.97-0.98 trained vs 0.42-0.43 for both controls; mean best AUROC per
    atom 0.98-0.99 vs 0.65-0.66; purity 0.68-0.71 vs 0.37-0.38. The bars sit between, far from both."""
    for seed in SEEDS:
        trained = planted["trained", seed]
        assert trained["atoms"] >= 0.9 and trained["auroc"] >= 0.95 and trained["fvu"] <= 0.2, seed
        for control in CONTROLS:
            c = planted[control, seed]
            assert c["atoms"] <= 0.6 and c["auroc"] <= 0.8 and c["fvu"] >= 0.5, (control, seed)
            assert trained["purity"] >= c["purity"] + 0.2, (control, seed)


def summary_rows(trained_purity, untrained_purity, trained_auroc, untrained_auroc) -> pd.DataFrame:
    return pd.DataFrame({"purity": trained_purity, "untrained_purity": untrained_purity,
                         "auroc:colour=red": trained_auroc, "untrained_auroc:colour=red": untrained_auroc})


def test_control_verdict_says_when_the_untrained_sae_does_as_well():
    better = control_verdict(summary_rows([0.6, 0.7], [0.4, 0.5], [0.95, 0.9], [0.7, 0.8]))
    assert better == ("purity higher at 2 of 2 (mean difference +0.200); best-latent AUROC per attribute value "
                      "higher at 2 of 2 (mean difference +0.175)")
    worse = control_verdict(summary_rows([0.5, 0.5], [0.56, 0.45], [0.95, 0.9], [0.7, 0.8]))
    assert worse.startswith("purity higher at 1 of 2 (mean difference -0.005)")
    assert worse.endswith("The untrained SAE does as well by purity: by that measure these features cannot show "
                          "that the SAE learned anything")
