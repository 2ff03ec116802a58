"""Kong et al.'s appendix analyses: MMSE curves (difflens.info.mmse: levels, seeding, the Gaussian reference, the
shipped shapes model's curves) and their figure, the MI-against-CMI scatter of Appendix C (report.appendix), and the
rule in the default workflow."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.info.inputs import encode_samples
from difflens.info.mmse import (COLUMNS, curve_images, curve_information, curve_levels, gaussian_reference,
                                latent_variance, mmse_curves)
from difflens.info.toy import GaussianToyModel
from difflens.report import appendix
from difflens.report.items import render
from difflens.report.revelio import ReportError
from difflens.report.style import Palette
from conftest import load_shipped_shapes, make_shapes_world
from figure_check import assert_png_is_pdf_page
from workflow_utils import run_snakemake

V = torch.tensor([[[1.0, -0.5], [0.8, 0.3]]])


# ---- the library ----------------------------------------------------------------------------------------------------
def test_levels_span_the_trained_range_at_distinct_timesteps():
    toy = GaussianToyModel(V, 0.5)
    t, a = curve_levels(toy, 12)
    assert len(t) == 12 and len(set(t.tolist())) == 12 and torch.all(torch.diff(a) > 0)
    assert float(a[0]) == pytest.approx(float(toy.log_snr.min())) and float(a[-1]) == pytest.approx(
        float(toy.log_snr.max()))
    assert torch.equal(a, toy.log_snr[t].double())
    t, a = curve_levels(toy, 5000)  # more levels than timesteps: each timestep once
    assert len(t) == len(set(t.tolist())) <= 1000 and torch.all(torch.diff(a) > 0)
    with pytest.raises(ValueError, match="infodecomp.mmse.n_levels"):
        curve_levels(toy, 1)


def test_gaussian_reference_is_the_mmse_of_a_gaussian_and_bounds_a_correlated_one():
    """x ~ N(0, s^2 I): the reference of its variances is its MMSE at every level; with correlated elements the
    per-element linear denoiser does worse than the optimal one, so the reference lies above the MMSE."""
    a = np.linspace(-8, 8, 9)
    white = GaussianToyModel(torch.zeros(1, 2, 2), 0.7)
    ref = gaussian_reference(torch.full((1, 2, 2), 0.49, dtype=torch.float64), torch.tensor(a))
    np.testing.assert_allclose(ref, [white.mmse(float(x)) for x in a], rtol=1e-9)
    np.testing.assert_allclose(gaussian_reference(torch.ones(3), torch.tensor(a)), 3 / (1 + np.exp(-a)), rtol=1e-12)
    toy = GaussianToyModel(V, 0.5)
    var = (V.flatten() ** 2 + 0.25).view(V.shape)  # the diagonal of v v^T + s^2 I
    ref, exact = gaussian_reference(var, torch.tensor(a)), np.array([toy.mmse(float(x)) for x in a])
    assert np.all(ref >= exact - 1e-12) and np.max(ref - exact) > 0.1
    # an element without variance adds nothing
    assert gaussian_reference(torch.tensor([1.0, 0.0]), torch.tensor([0.0]))[0] == pytest.approx(0.5)


def test_curves_match_the_closed_form_and_do_not_depend_on_the_other_images():
    """On the Gaussian world, each image's caption (y given) and empty-prompt rows converge to the closed-form errors
    of that point; an image's curves are the same computed alone or among others (seeded by its sample id)."""
    toy = GaussianToyModel(V, 0.5)
    x, y = toy.sample(3, seed=1)
    images = pd.DataFrame({"sample_id": ["a", "b", "c"], "caption": [f"y={v:.6f}" for v in y]})
    t, a = curve_levels(toy, 5)
    curves = mmse_curves(toy, x, images, t, a, n_draws=512, seed=0)
    assert list(curves.columns) == COLUMNS and len(curves) == 3 * 2 * 5 and curves["gaussian"].isna().all()
    for k, r in enumerate(images.itertuples()):
        for kind, cond in (("caption", float(r.caption[2:])), ("empty", float("nan"))):
            got = curves[(curves["sample_id"] == r.sample_id) & (curves["prompt"] == kind)]
            exact = [toy.point_error(x[k], float(level), cond) for level in got["logsnr"]]
            np.testing.assert_allclose(got["mmse"], exact, rtol=0.15, atol=1e-3)
    alone = mmse_curves(toy, x[1:2], images.iloc[1:2], t, a, n_draws=512, seed=0)
    pd.testing.assert_frame_equal(alone.reset_index(drop=True),
                                  curves[curves["sample_id"] == "b"].reset_index(drop=True))
    other = mmse_curves(toy, x[1:2], images.iloc[1:2], t, a, n_draws=512, seed=1)
    assert not np.allclose(other["mmse"], alone["mmse"])


def test_curve_information_is_half_the_area_between_the_curves():
    a = np.array([0.0, 1.0, 3.0])
    rows = [{"sample_id": "p", "prompt": "empty", "logsnr": v, "mmse": 5.0} for v in a]
    rows += [{"sample_id": "p", "prompt": "caption", "logsnr": v, "mmse": 3.0} for v in a]  # gap 2 over 3: 3 nats
    rows += [{"sample_id": "q", "prompt": "empty", "logsnr": v, "mmse": v} for v in a]
    rows += [{"sample_id": "q", "prompt": "caption", "logsnr": v, "mmse": 0.0} for v in a]  # 1/2 * 4.5
    info = curve_information(pd.DataFrame(rows).sample(frac=1, random_state=0))
    assert info["p"] == pytest.approx(3.0) and info["q"] == pytest.approx(2.25)


# ---- the shipped shapes model -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_shapes_world(tmp_path_factory, "appendix_world", 60)


@pytest.fixture(scope="module")
def shapes_model():
    return load_shipped_shapes()


def test_shapes_model_curves(world, shapes_model):
    """4 test images, 8 levels, 4 draws (held at seeds 0-5: the mean curves rise by a factor >= 2.2 from level to
    level, the caption's mean lies below the empty prompt's at all 8 levels, at >= 90% of the (image, level) pairs,
    and every image's i^s is >= 28 nats). In eps units the MMSE rises with log-SNR; in x units it is flat at low
    SNR (rising by at most 0.1% there at those seeds) and falls by orders of magnitude."""
    images = curve_images(world, "test", 4)
    x = encode_samples(shapes_model, world, list(images["sample_id"]))
    t, a = curve_levels(shapes_model, 8)
    curves = mmse_curves(shapes_model, x, images, t, a, n_draws=4, seed=0)
    mean = curves.pivot_table(index="logsnr", columns="prompt", values="mmse")
    for kind in ("caption", "empty"):
        assert np.all(np.diff(np.log(mean[kind])) > 0.3), mean
        x_units = np.log(mean[kind]) - mean.index.to_numpy()  # log(e^-a mmse): flat at low SNR (mmse ~ e^a var)
        assert np.all(np.diff(x_units) < 0.05) and x_units.iloc[0] - x_units.iloc[-1] > np.log(100), mean
    assert (mean["caption"] <= mean["empty"]).sum() >= 7, mean
    pairs = curves.pivot_table(index=["sample_id", "logsnr"], columns="prompt", values="mmse")
    assert (pairs["caption"] <= pairs["empty"]).mean() >= 0.75
    assert curve_information(curves).min() > 10


def test_latent_variance_does_not_depend_on_the_batch(world, shapes_model):
    ids = list(world.samples["sample_id"][:7])
    whole = encode_samples(shapes_model, world, ids).double().var(0)
    torch.testing.assert_close(latent_variance(shapes_model, world, ids, batch_size=3), whole, rtol=1e-6,
                               atol=1e-9)
    with pytest.raises(ValueError, match="reference_images"):
        latent_variance(shapes_model, world, ids[:1])
    uncaptioned = SimpleNamespace(name="bare", samples=world.samples.assign(caption=" "))
    with pytest.raises(ValueError, match="infodecomp.mmse.split"):
        curve_images(uncaptioned, "test", 0)


# ---- the figures --------------------------------------------------------------------------------------------------
def _curves_file(folder: Path) -> Path:
    rows = []
    for sid, shift in (("s1", 1.0), ("s2", 3.0)):
        for t, a in ((900, -4.0), (500, 0.0), (10, 4.0)):
            rows.append({"sample_id": sid, "prompt": "empty", "timestep": t, "logsnr": a, "mmse": 10 + a + shift,
                         "gaussian": 20.0 + a})
            rows.append({"sample_id": sid, "prompt": "caption", "timestep": t, "logsnr": a, "mmse": 10 + a,
                         "gaussian": 20.0 + a})
    path = folder / "info" / "m" / "d" / "mmse_curves.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def test_mmse_item_table_and_figure(tmp_path):
    path = _curves_file(tmp_path)
    png, pdf, csv = tmp_path / "mmse.png", tmp_path / "mmse.pdf", tmp_path / "mmse.csv"
    table = render("infodecomp/mmse", {"mmse": [str(path)]}, png, pdf, csv, palette=Palette(models=["m"]))
    assert list(table["logsnr"]) == [-4.0, 0.0, 4.0] and set(table["model"]) == {"m"} and set(table["dataset"]) == {"d"}
    np.testing.assert_allclose(table["caption"], [6.0, 10.0, 14.0])
    np.testing.assert_allclose(table["gap"], [2.0, 2.0, 2.0])  # shifts 1 and 3
    np.testing.assert_allclose(table["gap_se"], 1.0)  # the sd of (1, 3), sqrt(2), over sqrt(2 images)
    np.testing.assert_allclose(table["gaussian"], [16.0, 20.0, 24.0])
    assert table["i_s_nats"].iloc[0] == pytest.approx(0.5 * 2.0 * 8.0)  # 1/2 * mean gap * range
    assert (table["n_images"] == 2).all() and len(pd.read_csv(csv)) == 3
    assert_png_is_pdf_page(png, pdf)
    captions = pd.read_csv(path).query("prompt == 'caption'").assign(model="m", dataset="d")
    with pytest.raises(ReportError, match="empty"):
        appendix.mmse_table(captions)


def test_micmi_item_table_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    n = 12
    maps = {"sample_id": np.array([f"i{k // 3}" for k in range(n)]), "word": np.array(["red", "circle", "above"] * 4),
            "word_type": np.array(["colour", "object", "relation"] * 4), "mi_nats": rng.gamma(2.0, 5.0, n),
            "cmi_nats": rng.gamma(2.0, 5.0, n).astype(np.float32), "mi": np.zeros((n, 2, 2), np.float32)}
    npz = tmp_path / "info" / "m" / "d" / "localization_maps.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, **maps)
    loc = npz.with_name("localization.csv")
    loc.write_text("word_type\n")
    png, pdf, csv = tmp_path / "micmi.png", tmp_path / "micmi.pdf", tmp_path / "micmi.csv"
    table = render("infodecomp/micmi", {"localization": [str(loc), str(npz)]}, png, pdf, csv,
                   palette=Palette(models=["m"]))
    assert list(table.columns) == appendix.MICMI_COLUMNS and len(table) == n
    assert set(table["model"]) == {"m"} and set(table["dataset"]) == {"d"}
    np.testing.assert_allclose(table["mi_nats"], maps["mi_nats"])
    np.testing.assert_allclose(table["cmi_nats"], maps["cmi_nats"], rtol=1e-6)
    assert list(table["word_type"][:3]) == ["colour", "object", "relation"]
    assert len(pd.read_csv(csv)) == n
    assert_png_is_pdf_page(png, pdf)
    del maps["cmi_nats"]
    with pytest.raises(ReportError, match="cmi_nats"):
        appendix.micmi_table(maps, "m", "d")


# ---- the workflow ------------------------------------------------------------------------------------------------
def test_default_run_makes_the_curves_and_both_figures(tmp_path):
    results = tmp_path / "results"
    out = run_snakemake(["-n"], {"results": str(results)}, tmp_path)
    text = out.stdout + out.stderr
    assert "rule mmse_curves:" in text and f"{results}/info/shapes/shapes/mmse_curves.csv" in text
    for name in ("mmse", "micmi"):
        assert f"{results}/figures/infodecomp/{name}.png" in text
