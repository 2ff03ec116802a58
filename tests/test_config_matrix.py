"""The test-config matrix (tests/configs, as rna-seq-star-deseq2 keeps its .test/config_*): every config runs the
workflow to its end on a small data set (or dry-runs, where it needs the network), and every option the schema
documents is set by at least one of them.

Each config file is a standalone config (run with --replace-workflow-config); its first line says ``# mode: run``
or ``# mode: dry-run``; ``{tmp}`` in it is the test's temporary folder, where the test builds what the config
points at (image folders, tiny model folders).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from browser_check import check_browser, chromium_or_skip
from figure_check import assert_png_is_pdf_page
from workflows.runs import run, snakemake_cmd
from workflows.runs import run as run_snakemake

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"
SCHEMA = ROOT / "schemas" / "config.schema.yaml"


def config_files() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def load_matrix_config(path: Path, tmp: Path) -> dict:
    return yaml.safe_load(path.read_text().replace("{tmp}", str(tmp)))


def mode(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first in ("# mode: run", "# mode: dry-run"), f"{path.name}: first line must give the mode"
    return first.split(": ")[1]


# ---- what a config points at, built in its temporary folder --------------------------------------------------------
def photos(tmp: Path) -> None:
    """Two classes of 40 x 30 px images, a captions CSV for all of them and one for half of them, and a CSV of
    candidate captions for two of them."""
    import numpy as np
    from PIL import Image

    rows = []
    for c, name in enumerate(["cat", "dog"]):
        (tmp / "photos" / name).mkdir(parents=True)
        for i in range(6):
            pixels = np.full((30, 40, 3), 60 + 120 * c + 10 * i, np.uint8)
            Image.fromarray(pixels).save(tmp / "photos" / name / f"{i}.png")
            rows.append({"image": f"{name}/{i}.png", "caption": f"a {name} number {i}"})
    pd.DataFrame(rows).to_csv(tmp / "photos" / "captions.csv", index=False)
    pd.DataFrame(rows[::2]).to_csv(tmp / "photos" / "partial.csv", index=False)
    (tmp / "photos" / "choices.csv").write_text("image,caption,negatives\ncat/0.png,a cat,a dog\n"
                                                "dog/1.png,a dog,[\"a cat\"]\n")


def tiny_backbones(tmp: Path) -> None:
    from difflens.data.shapes import CLASSES
    from tiny_pipelines import build_tiny_clip, build_tiny_dinov2, build_tiny_dit, build_tiny_sd

    build_tiny_sd(tmp / "hub" / "tiny-org" / "tiny-sd")
    build_tiny_dit(tmp / "tiny-dit", CLASSES)
    build_tiny_clip(tmp / "hub" / "tiny-org" / "tiny-clip")
    build_tiny_dinov2(tmp / "tiny-dino")


def tiny_families(tmp: Path) -> None:
    from tiny_families import build_tiny_flux, build_tiny_pixart, build_tiny_sd3, build_tiny_sdxl

    build_tiny_sdxl(tmp / "hub" / "tiny-org" / "tiny-sdxl")
    build_tiny_pixart(tmp / "tiny-pixart")
    build_tiny_sd3(tmp / "hub" / "tiny-org" / "tiny-sd3")
    build_tiny_flux(tmp / "tiny-flux")


SETUP = {"extraction_options.yaml": photos, "tiny_backbones.yaml": tiny_backbones, "families.yaml": tiny_families}


# ---- what each run must have produced, beyond finishing -----------------------------------------------------------
def top_image_grid_size(latents: pd.DataFrame, top: int, grid_latents: int) -> tuple[int, int]:
    """The size in pixels of an SAE's top-image grid (sae.analysis.save_top_image_grid: 1.1 in per image plus 1.6 in
    wide, 1.3 in per latent plus 0.4 in tall, at 130 dpi) with ``top`` images per latent, for the latents it shows:
    those of sigma rank below ``grid_latents`` in ``latents`` (latents.csv), else the first ``grid_latents``."""
    shown = int(latents["sigma_rank"].between(0, grid_latents - 1).sum()) or min(grid_latents, len(latents))
    return round((1.1 * top + 1.6) * 130), round((1.3 * shown + 0.4) * 130)


def check_extraction_options(results: Path, out: str) -> None:
    from difflens.extract.store import FeatureStore

    store = FeatureStore(results)
    rows = pd.read_csv(results / "data/shapes/samples.csv")
    prompts = store.prompts("shapes", "shapes", "mid_block", 25)
    assert prompts == {sid: f"a photo of a {name}" for sid, name in zip(rows["sample_id"], rows["label_name"])}
    attrs = store.attrs("shapes", "shapes", "up_ft1", 500)
    assert attrs["prompt"] == "a photo of a {label}" and attrs["noise_draws"] == 2 and attrs["seed"] == 7
    with h5py.File(store.files("shapes", "shapes", "up_ft1", 500)[0], "r") as f:
        assert f["maps"].compression == "gzip" and f["maps"].shape[1:] == (64, 16, 16)
    jobs = [p.relative_to(results / "benchmarks").as_posix()
            for p in (results / "benchmarks" / "extract_activations").rglob("*.tsv")]
    assert jobs == ["extract_activations/shapes/shapes/shard-0.tsv"]  # one job per shard, every timestep in it
    photo_rows = pd.read_csv(results / "data/photos/samples.csv")
    assert sorted(photo_rows["caption"])[:2] == ["a cat number 0", "a cat number 1"]
    loose = pd.read_csv(results / "data/loose/samples.csv")
    assert (loose["caption"].str.startswith("a photo of a ")).sum() == 6  # the half without a caption row
    bare = pd.read_csv(results / "data/bare/samples.csv")
    assert sorted(set(bare["caption"])) == ["a photo of a cat", "a photo of a dog"]
    assert len(pd.read_csv(results / "data/photos/aro.csv")) == 2  # params.choices: the candidate captions
    # infodecomp.maps on the template captions, every word (params.words: all) of the first two images
    word_maps = pd.read_csv(results / "info/shapes/bare/word_maps.csv")
    assert word_maps["sample_id"].nunique() == 2 and set(word_maps["word"]) == {"a", "photo", "of", "cat"}
    assert (results / "models/shapes/check.json").is_file()
    # the run's provenance: code identity, versions and the resolved config it ran with
    record = json.loads((results / "provenance.json").read_text())
    assert Path(record["config"]["results"]).resolve() == Path(results).resolve() and record["git_commit"]
    assert record["versions"]["snakemake"] == "9.27.1"
    acc = pd.read_csv(results / "classify/shapes/shapes/accuracy.csv")
    diffc = acc[acc["classifier"] == "diffc"]
    assert list(diffc["target"]) == ["colour"] and set(diffc["layer"]) == {"up_ft1"}
    assert (diffc["epochs"] == 2).all()
    probes = acc[acc["classifier"] == "linear_probe"]
    assert len(probes) == 2 * 2 * 2 and set(probes["target"]) == {"label", "has_red"}  # layers x timesteps x targets
    result = json.loads((results / "classify/shapes/shapes/diffc/colour/t25/up_ft1.json").read_text())
    assert result["mode"] == "cached" and result["class_names"] == ["blue", "green", "red", "yellow"]
    assert diffc[["val_accuracy", "test_accuracy"]].values.tolist() == [[result["val_accuracy"],
                                                                          result["test_accuracy"]]]
    # pca.n_images (3) test images and their views in one row, each pair 2 x 1.6 in wide, 1.8 in + 0.4 in for the
    # title tall, at 100 dpi (classify.pca.save_pca_figure)
    shown = min(3, int((rows["split"] == "test").sum()))
    assert Image.open(results / "classify/shapes/shapes/pca/t25/up_ft1.png").size == (round(320 * shown), 220)
    assert "no external baselines configured" in (results / "logs/collect_accuracy/shapes/shapes.log").read_text()
    sae = pd.read_csv(results / "sae/shapes/shapes/summary.csv")
    assert sorted(sae["input"]) == ["pooled", "pooled", "spatial", "spatial"]
    assert set(sae["layer"]) == {"mid_block", "up_ft1"}
    assert (sae["n_latents"] == 2 * 64).all() and (sae["k"] == 2).all() and sae["val_fvu"].notna().all()
    run = results / "sae/shapes/shapes/tiny/spatial/t25/mid_block"
    # every SAE carries its two controls (its untrained state, saved beside it, and random directions), read by the
    # same analysis; the untrained one reconstructs nothing the trained one learned
    assert (run / "init/sae.safetensors").is_file() and json.loads((run / "init/sae_config.json").read_text())[
        "untrained"] is True
    for control in ("untrained", "random_directions"):
        assert sae[[f"{control}_purity", f"{control}_sigma_label", f"{control}_live_latents"]].notna().all().all()
        assert sae[f"{control}_live_latents"].between(1, 2 * 64).all()
    trained = json.loads((run / "sae_config.json").read_text())
    assert trained["positions_per_image"] == 4 and trained["activation"] == "batchtopk"
    assert trained["n_train_vectors"] == 4 * (rows["split"] == "train").sum() > 0  # 4 of the 16 positions each
    latents = pd.read_csv(run / "latents.csv")
    assert {"latent", "frequency", "purity", "sigma", "best_attribute", "auroc"} <= set(latents.columns)
    grid = yaml.safe_load((results.parent / "config.yaml").read_text())["sae"]
    assert Image.open(run / "top_images.png").size == top_image_grid_size(latents, grid["top"], grid["grid_latents"])
    check_report_stage(results, expected={"revelio/table2a", "revelio/fig3", "revelio/fig4", "revelio/fig10",
                                          "revelio/table5", "infodecomp/table1", "infodecomp/fig2",
                                          "infodecomp/table3", "shapes/attributes"},
                       absent={"revelio/table2d", "infodecomp/table4"})
    # (the feature browser in headless Chromium: test_feature_browser_of_the_extraction_options_run)
    # the Snakemake report of the run builds (a zip: the browser folder is in it), every figure and table in it
    report = results.parent / "report.zip"
    run_snakemake(snakemake_cmd([], results.parent / "config.yaml", "--report", str(report),
                                "--replace-workflow-config"))
    with zipfile.ZipFile(report) as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
    assert any(n.endswith("/table2a.png") for n in names) and any(n.endswith("/table2a.csv") for n in names)
    assert any(n.endswith("/index.html") for n in names) and any(n.endswith("/app.js") for n in names)
    assert "Revelio Table 2a" in html and "Kong et al. Fig. 2" in html and "Feature browser" in html


def check_report_stage(results: Path, expected: set[str], absent: set[str]) -> None:
    """The figure stage made the ``expected`` paper items and none of the ``absent`` ones; each item it made is in
    the catalog, its PNG is its PDF's page and its CSV a table of at least one row (the runs of the matrix give every
    item data: none is a note); the summary page and the browser."""
    from difflens.report.catalog import ITEMS

    made = {f"{p.parent.name}/{p.stem}" for p in (results / "figures").glob("*/*.png")}
    assert expected <= made and not (absent & made), sorted(made)
    for key in made:
        figure = results / "figures" / key
        assert key in ITEMS
        assert_png_is_pdf_page(figure.with_suffix(".png"), figure.with_suffix(".pdf"))
        assert len(pd.read_csv(figure.with_suffix(".csv"))) >= 1, key
    assert "| section | quantity | this run | model | dataset |" in (results / "summary.md").read_text()
    assert (results / "browser" / "index.html").is_file()


def check_tiny_steering(results: Path) -> None:
    """Both backbones steered end to end: one latent, add / ablate / clamp on 2 images from each source; the CMI
    predictor on SD's inverted images only (a real captioned image), the heat map everywhere."""
    for model, layer in (("sd", "bottleneck"), ("dit", "transformer_blocks.1")):
        folder = results / f"steer/{model}/shapes/tiny/pooled/t10/{layer}"
        chosen = pd.read_csv(folder / "chosen.csv")
        assert len(chosen) == 1 and "clamp_q0.9" in chosen.columns
        items = pd.read_csv(folder / "items.csv")
        assert len(items) == 2 * 3 * 2 and set(items["edit"]) == {"add=+3", "ablate", "clamp@q0.9"}
        clamped = items[items["kind"] == "clamp"]["value"]
        assert (clamped == chosen["clamp_q0.9"][0]).all() and (clamped > 0).all()
        assert set(items["source"]) == {"inverted", "noise"} and (items["change_total"] >= 0).all()
        corr = pd.read_csv(folder / "correlations.csv")
        predictors = set(corr[corr["source"] == "inverted"]["predictor"])
        assert predictors == ({"heat", "cmi"} if model == "sd" else {"heat"})
        assert set(corr[corr["source"] == "noise"]["predictor"]) == {"heat"}
        control = pd.read_csv(folder / "control_effects.csv")  # the untrained SAE, matched to the same attribute
        assert len(control) == 2 * 3 and (control["matches"] == chosen["latent"][0]).all()
        assert set(control["edit"]) == set(items["edit"])
        images = np.load(folder / "images.npz")
        assert {"inverted/unedited", "noise/unedited"} <= set(images.files) and len(images.files) == 2 + 2 * 3
        log = (results / f"logs/steer_latents/{model}/shapes/tiny/pooled/t10/{layer}.log").read_text()
        assert "heun 2 steps" in log and "guidance 2" in log and "uniform weighting" in log


def check_tiny_backbones(results: Path, out: str) -> None:
    from difflens.extract.store import FeatureStore

    store = FeatureStore(results)
    sd = store.attrs("sd", "shapes", "bottleneck", 900)
    assert sd["prompt"] == "{label}" and sd["resolution"] == 16 and sd["dtype"] == "float32"
    assert sd["module"] == "mid_block" and store.attrs("sd", "shapes", "up_ft1", 10)["module"] == "up_blocks.1"
    dit = store.attrs("dit", "shapes", "transformer_blocks.1", 10)
    assert dit["dtype"] == "bfloat16" and store.pooled("dit", "shapes", "transformer_blocks.0", 900).x.shape[0] == 12
    log = (results / "logs/extract_activations/sd/shapes/shard-0.log").read_text()
    assert "components ('denoiser', 'text')" in log  # a non-empty prompt: the text encoder is loaded
    assert not (results / "models/sd/empty_prompt.safetensors").exists()
    acc = pd.read_csv(results / "classify/dit/shapes/accuracy.csv")  # classify.models: the DiT alone, probes only
    assert set(acc["classifier"]) == {"linear_probe"} and set(acc["model"]) == {"dit", "clip", "dino"}
    dit_rows, external = acc[acc["model"] == "dit"], acc[acc["model"] != "dit"]
    assert dit_rows["timestep"].nunique() == 2 and not (results / "classify/sd").exists()
    assert {"label", "colour", "has_red"} <= set(dit_rows["target"]) == set(external["target"])
    assert (external["layer"] == "image").all() and external["timestep"].isna().all()
    assert "no external baselines" not in (results / "logs/collect_accuracy/dit/shapes.log").read_text()
    # the hub models (a pipeline and a baseline's image model) were fetched once each, by local download jobs, and
    # their jobs loaded the cached folders
    assert "localrule download_model:" in out and out.count("rule download_model:") == 2
    clip = results.parent / "model_cache" / "tiny-org--tiny-clip"
    assert sorted(p.name for p in clip.iterdir()) == [".difflens-fetched.json", "config.json", "model.safetensors",
                                                     "preprocessor_config.json"]
    fetched = results.parent / "model_cache" / "tiny-org--tiny-sd"
    assert sd["source"] == str(fetched) and (fetched / ".difflens-fetched.json").is_file()
    info = results / "info" / "sd" / "shapes"
    aro = pd.read_csv(info / "aro.csv")
    assert set(aro["kind"]) == {"relation", "attribute", "order"} and set(aro["score"]) == {"i_o", "i_s", "err"}
    items = pd.read_csv(info / "aro_items.csv")
    val_ids = set(pd.read_csv(results / "data/shapes/samples.csv").query("split == 'val'")["sample_id"])
    assert set(items["sample_id"]) == val_ids and len(list((info / "aro").glob("shard-*.csv"))) == 1
    loc = pd.read_csv(info / "localization.csv").set_index("word_type")
    loc_items = pd.read_csv(info / "localization_items.csv")
    evaluated = loc_items[loc_items["role"] == "evaluation"]
    assert loc.loc["all", "threshold_source"] == "val split" and loc.loc["all", "n"] == len(evaluated) > 0
    assert loc.loc["all", "cmi"] == pytest.approx(evaluated["iou:cmi"].mean())  # mIoU: the evaluated rows' mean
    maps = np.load(info / "localization_maps.npz")
    assert maps["cmi"].shape == (len(loc_items), 8, 8)  # one map per word row, on the latent grid
    assert (maps["mi"] >= 0).all()  # i^o maps: non-negative
    # n_draws [2, 3]: the maps after the first 2 draws kept beside the 3-draw ones; the DDIM-inversion attention row
    assert maps["cmi@2"].shape == maps["attention_ddim"].shape == maps["cmi"].shape
    assert {"cmi@2", "cmi@2:oracle", "attention_itd", "attention_ddim:oracle"} <= set(loc.columns)
    assert loc.loc["all", "draws"] == 3 and loc.loc["all", "ddim_steps"] == 2
    edits = pd.read_csv(info / "intervention_items.csv")
    assert set(edits["edit"]) <= {"omit", "swap"} and "omit" in set(edits["edit"])
    omits = edits[edits["edit"] == "omit"]  # omit: delete: the prompt is the words.csv context
    assert (omits["prompt"] == omits["context"]).all() and {"cmi_s_nats", "attention_regen_total"} <= set(edits)
    assert "heun 2 steps" in (results / "logs/intervene_words/sd/shapes.log").read_text()
    # the class-conditional DiT: class-label localization only, one row per image (its class against the null
    # class, the mask of the object its label names), MI and CMI maps and no attention (a DiT attends to no text)
    dit = results / "info/dit/shapes"
    assert sorted(p.name for p in dit.glob("*.csv")) == ["localization.csv", "localization_items.csv"]
    dit_maps = np.load(dit / "localization_maps.npz")
    samples = pd.read_csv(results / "data/shapes/samples.csv").set_index("sample_id")
    assert list(dit_maps["word"]) == [samples.loc[s, "label_name"] for s in dit_maps["sample_id"]]
    assert set(dit_maps["word_type"]) == {"class"} and "attention_itd" not in dit_maps.files
    np.testing.assert_array_equal(dit_maps["mi"], dit_maps["cmi"])  # caption = the class, context = the null class
    table = pd.read_csv(dit / "localization.csv").set_index("word_type")
    assert table.loc["class", "n"] == (pd.read_csv(dit / "localization_items.csv")["role"] == "evaluation").sum()
    assert 0 < table.loc["class", "whole_image"] < 1 and 0 <= table.loc["class", "cmi"] <= 1
    assert not (fetched / "safety_checker").exists()
    check_tiny_steering(results)
    check_report_stage(results, expected={"revelio/table2d", "revelio/fig9", "revelio/table5", "infodecomp/table4",
                                          "infodecomp/fig3", "infodecomp/mmse", "infodecomp/micmi",
                                          "shapes/attributes", "steer/grid", "steer/specificity", "steer/causal"},
                       absent={"revelio/fig4"})
    blocks = pd.read_csv(results / "figures/revelio/table2d.csv")
    assert list(blocks["block"]) == [0, 1] and set(blocks["model"]) == {"dit"}
    # sae.sigma: public_code headlined, the sparse definition beside it; a tiny DiT is not the paper's: no number
    assert set(blocks["sigma_definition"]) == {"public_code"}
    assert blocks["sigma_label"].equals(blocks["sigma_label_public_code"]) and "sigma_label_sparse" in blocks
    assert blocks["paper_value"].isna().all() and blocks["paper_differs"].str.startswith("model dit").all()
    best = pd.read_csv(results / "figures/revelio/table5.csv")
    assert {"clip", "dino", "dit"} <= set(best["model"])  # the external baselines beside the DiT's probes


def check_retrain_and_check(results: Path, out: str) -> None:
    card = json.loads((results / "models/shapes/trained/difflens_model.json").read_text())
    assert card["training"]["steps"] == 3 and card["train_config"]["arch"]["block_out_channels"] == [16, 32, 32]
    arch = card["train_config"]["arch"]
    assert arch["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert arch["text_time_embedding"] and arch["embedding_std"] == 1.0 and arch["prediction_type"] == "epsilon"
    assert card["train_config"]["lr"] == 0.002 and card["train_config"]["p_uncond"] == 0.2
    scheduler = json.loads((results / "models/shapes/trained/scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"  # not the default: the rule passes the key on
    assert card["train_config"]["noise_levels"] == {"distribution": "logistic", "loc": 1.0, "scale": 2.0}
    check = json.loads((results / "models/shapes/check.json").read_text())
    assert check["model"].endswith("models/shapes/trained") and check["n_test_images"] == 4
    assert {"loss_conditional", "loss_unconditional", "samples"} <= set(check)
    assert check["layers"][:2] == ["down_blocks.0", "down_blocks.1"]
    for rule in ("prepare_dataset", "train_shapes_model", "check_model", "encode_latents", "extract_activations"):
        assert list((results / "logs" / rule).rglob("*.log")) and list((results / "benchmarks" / rule).rglob("*.tsv"))
    log = (results / "logs/extract_activations/shapes/shapes/shard-0.log").read_text()
    assert "components ('denoiser',)" in log  # unconditional: no text encoder, the stored empty prompt instead
    assert (results / "models/shapes/empty_prompt.safetensors").is_file()
    assert (results / "activations/shapes/shapes/index.json").is_file()
    acc = pd.read_csv(results / "classify/shapes/shapes/accuracy.csv")
    assert set(zip(acc["classifier"], acc["target"])) == {("linear_probe", "label"), ("linear_probe", "colour"),
                                                           ("diffc", "label")}
    for layer in ("mid_block", "up_blocks.1"):  # classify.group all: both classifiers in one job, one denoiser pass
        result = json.loads((results / f"classify/shapes/shapes/diffc/label/t25/{layer}.json").read_text())
        assert result["mode"] == "on_the_fly" and result["epochs"] == 1 and len(result["curves"]) == 1
        assert result["heads_in_job"] == 2
    log = (results / "logs/train_diffc/shapes/shapes/label/all.log").read_text()
    assert "on_the_fly maps of t25/mid_block (32, 4, 4), t25/up_blocks.1 (" in log
    assert "images/s on CPU" in log.splitlines()[-1]


def check_downloads(results: Path, out: str) -> None:
    for job in ("download_model", "download_dataset", "prepare_dataset"):
        assert f"rule {job}:" in out, job
    assert "hubdir=stable-diffusion-v1-5--stable-diffusion-v1-5" in out
    assert {"raw=pets", "raw=coco2017", "raw=aircraft"} <= set(line.strip().removeprefix("wildcards: ")
                                                               for line in out.splitlines())


def check_families(results: Path, out: str) -> None:
    kinds = {"sdxl": ["up_ft1", "bottleneck"], "pixart": ["transformer_blocks.1"],
             "sd3": ["transformer_blocks.0", "transformer_blocks.1"],
             "flux": ["transformer_blocks.0", "single_transformer_blocks.1"]}
    grid = {"sdxl": {"up_ft1": (32, 8, 8)}, "pixart": {"transformer_blocks.1": (16, 4, 4)},
            "sd3": {"transformer_blocks.1": (16, 4, 4)}, "flux": {"single_transformer_blocks.1": (16, 4, 4)}}
    rows = pd.read_csv(results / "data/shapes/samples.csv")
    for model, layers in kinds.items():
        log = (results / f"logs/extract_activations/{model}/shapes/shard-0.log").read_text()
        assert f"loaded {model} model" in log
        with h5py.File(next((results / f"activations/{model}/shapes").rglob("*.h5"))) as f:
            assert len(f["sample_id"]) == len(rows)  # every row carries its sample id
        acc = pd.read_csv(results / f"classify/{model}/shapes/accuracy.csv")
        assert set(acc.loc[acc["classifier"] == "linear_probe", "layer"]) == set(layers)
        (layer, shape), = grid[model].items()
        diffc = json.loads(next((results / f"classify/{model}/shapes/diffc/colour/t10").glob("*.json")).read_text())
        # classify.cache_limit_gb: the transformers' 16-channel 4 x 4 maps are cached, SDXL's 32-channel 8 x 8 not
        assert diffc["mode"] == ("on_the_fly" if model == "sdxl" else "cached"), model
        sae = pd.read_csv(results / f"sae/{model}/shapes/summary.csv")
        assert (sae["layer"] == layer).all() and sae["val_fvu"].notna().all()
        assert (sae["n_latents"] == shape[0]).all()  # expansion 1: one latent per channel of the block's maps
    assert "flux model" in log and "guidance-distilled" in log  # the tiny FLUX has FLUX.1-dev's guidance embedding
    for view in ("flux/shapes/pca/t10/single_transformer_blocks.1", "sdxl/shapes/pca/t10/up_ft1"):
        assert (results / f"classify/{view}.png").is_file()
    for model in kinds:
        info = results / f"info/{model}/shapes"
        maps = np.load(info / "localization_maps.npz")
        # attention rows on all four: SDXL's and PixArt's cross-attention (CLIP, T5 tokens), SD3's and FLUX's joint
        # attention (image queries on SD3's CLIP tokens, on FLUX's T5 tokens)
        assert maps["attention_itd"].shape == maps["cmi"].shape == (len(maps["word"]), 8, 8)
        att = maps["attention_itd"].reshape(len(maps["word"]), -1)
        assert (att >= 0).all() and (att.max(1) > 0).all() and (maps["mi"] >= 0).all(), model
        assert set(pd.read_csv(info / "intervention.csv")["predictor"]) >= {"cmi", "attention_regen"}
        curves = pd.read_csv(info / "mmse_curves.csv")
        assert np.isfinite(curves["logsnr"]).all() and curves["timestep"].nunique() == 3
    check_report_stage(results, expected={"revelio/table2a", "revelio/fig3", "infodecomp/table1", "infodecomp/fig2",
                                          "infodecomp/table3", "infodecomp/table4", "infodecomp/mmse"}, absent=set())
    assert (results / "browser/index.html").is_file()
    # fetched from the mirror: SDXL with both text encoders; SD3 without its T5 (options.t5: false)
    cache = results.parent / "model_cache"
    assert (cache / "tiny-org--tiny-sdxl/text_encoder_2/model.safetensors").is_file()
    assert (cache / "tiny-org--tiny-sd3/text_encoder_2").is_dir() and not (cache / "tiny-org--tiny-sd3/"
                                                                            "text_encoder_3").exists()


CHECKS = {"extraction_options.yaml": check_extraction_options, "tiny_backbones.yaml": check_tiny_backbones,
          "retrain_and_check.yaml": check_retrain_and_check, "downloads.yaml": check_downloads,
          "families.yaml": check_families}
#: configs whose run takes minutes beyond make test's budget: checked by make test-science
SCIENCE_CONFIGS = ("families.yaml",)


def test_every_config_has_its_check():
    assert sorted(CHECKS) == [p.name for p in config_files()]


#: config file name -> (its results folder, Snakemake's output) of the run this test process made of it
RUNS: dict[str, tuple[Path, str]] = {}


def finished_run(path: Path, tmp_path_factory) -> tuple[Path, str]:
    """Run (or dry-run) config ``path`` in a temporary folder of its own, once per test process (the tests that read
    a run share its xdist group): (the results folder, Snakemake's stdout and stderr)."""
    if path.name not in RUNS:
        tmp = tmp_path_factory.mktemp(path.stem)
        if path.name in SETUP:
            SETUP[path.name](tmp)
        cfg = tmp / "config.yaml"
        cfg.write_text(yaml.safe_dump(load_matrix_config(path, tmp), sort_keys=False))
        options = ["--cores", "2", "--max-threads", "1", "--replace-workflow-config"] + \
            (["-n"] if mode(path) == "dry-run" else [])
        proc = run(snakemake_cmd([], cfg, *options), env={"HF_HUB_OFFLINE": "1"})
        out = proc.stdout + proc.stderr
        if mode(path) == "run":
            assert "Nothing to be done" not in out and "steps (100%) done" in out
        RUNS[path.name] = (tmp / "results", out)
    return RUNS[path.name]


@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.xdist_group(f"config-{p.stem}")] +
                                               ([pytest.mark.science] if p.name in SCIENCE_CONFIGS else []))
                                  for p in config_files()], ids=lambda p: p.stem)
def test_config_runs(path, tmp_path_factory):
    CHECKS[path.name](*finished_run(path, tmp_path_factory))


@pytest.mark.xdist_group("config-extraction_options")
def test_feature_browser_of_the_extraction_options_run(tmp_path_factory):
    """The feature browser of the extraction_options run in headless Chromium (browser_check): the layers it offers,
    a layer switch, a latent's images and heat maps, the histogram, the data view's points and the information view.
    Without Chromium it skips (fails under DIFFLENS_REQUIRE_BROWSER=1, as in .ci/run) before running the config;
    the screenshots are kept under results/ of the repository."""
    chromium_or_skip()
    results, _ = finished_run(CONFIGS / "extraction_options.yaml", tmp_path_factory)
    seen = check_browser(results / "browser" / "index.html", ROOT / "results" / "screenshots")
    assert seen["layers"] == ["mid_block", "up_ft1"] and seen["latents_before"] != seen["latents_after"]
    assert seen["latent_images"] >= 2 and seen["heat_maps"] >= 1 and seen["histogram_bars"] == 5
    assert seen["points"] == 12 and seen["word_rows"] >= 1


# ---- schema coverage --------------------------------------------------------------------------------------------
def schema_keys(schema: dict, prefix: str = "") -> set[str]:
    """Every key path the schema documents ("*" for a name of the user's, e.g. models.*.layers), per-loader
    parameters (allOf / then branches) included."""
    out = set()
    for key, sub in schema.get("properties", {}).items():
        out |= {prefix + key} | schema_keys(sub, f"{prefix}{key}.")
    if isinstance(schema.get("additionalProperties"), dict):
        out |= schema_keys(schema["additionalProperties"], prefix + "*.")
    for branch in schema.get("allOf", []):
        out |= schema_keys(branch.get("then", {}), prefix)
    return out


def config_keys(cfg: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in cfg.items():
        path = prefix + key
        out.add(path)
        if isinstance(value, dict):
            named = path in ("datasets", "models", "sae.runs")  # objects keyed by names of the user's
            for k, v in value.items():
                if named:
                    out |= config_keys(v, f"{path}.*.") if isinstance(v, dict) else set()
                else:
                    out |= config_keys({k: v}, path + ".")
    return out


def uncovered(files: list[Path]) -> set[str]:
    documented = schema_keys(yaml.safe_load(SCHEMA.read_text()))
    set_somewhere = set().union(*(config_keys(load_matrix_config(p, Path("/tmp"))) for p in files))
    return documented - set_somewhere


def test_every_documented_option_is_set_by_a_test_config():
    assert uncovered(config_files()) == set()


def test_coverage_check_can_fail():
    """Without the retraining config, its keys are reported as documented but never set."""
    missing = uncovered([p for p in config_files() if p.name != "retrain_and_check.yaml"])
    assert {"models.*.train.space_to_depth", "models.*.train.noise_levels.scale", "models.*.train.p_uncond"} <= missing
    assert "extraction.map_compression" not in missing
