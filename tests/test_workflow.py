"""The workflow itself: dry runs of every config, lint, config errors before any job, and a tiny real run."""
import json
from pathlib import Path

import pytest

from workflow_utils import ROOT, run_snakemake, tiny_overlay


def test_default_config_dry_run(tmp_path):
    out = run_snakemake(["-n", "--quiet", "rules"], {"results": str(tmp_path / "results")}, tmp_path)
    assert "prepare_dataset" in out.stdout + out.stderr and "check_model" in out.stdout + out.stderr


@pytest.mark.parametrize("config_file", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_dry_run(config_file):
    out = run_snakemake(["-n", "--configfile", str(config_file), "--replace-workflow-config"])
    text = out.stdout + out.stderr
    assert "download_dataset" in text and "prepare_dataset" in text
    # every hub model's weights are fetched once, by a local job planned before anything else needs them
    import re

    import yaml

    hub = {m["source"] for m in yaml.safe_load(config_file.read_text())["models"].values() if m["kind"] != "shapes"}
    assert hub and re.search(rf"^download_model\s+{len(hub)}$", text, flags=re.M), text[-3000:]
    assert text.count("rule download_model:") == len(hub)


def test_lint_is_clean():
    out = run_snakemake(["--lint"])
    assert "Congratulations" in out.stdout + out.stderr


def test_bad_config_fails_before_any_job(tmp_path):
    overlay = tiny_overlay(tmp_path / "results")
    overlay["models"]["shapes"]["kind"] = "unet3000"
    out = run_snakemake([], overlay, tmp_path, check=False)
    assert out.returncode != 0
    assert "config key models.shapes.kind" in out.stderr and "['shapes', 'sd', 'dit']" in out.stderr
    assert not (tmp_path / "results").exists()


def test_tiny_run_trains_reloads_and_checks_the_model(tmp_path):
    results = tmp_path / "results"
    targets = [f"{results}/models/shapes/check.json", f"{results}/models/shapes/samples.png"]
    run_snakemake(targets, tiny_overlay(results), tmp_path)
    card = json.loads((results / "models/shapes/trained/difflens_model.json").read_text())
    assert card["training"]["steps"] == 3 and card["train_config"]["arch"]["block_out_channels"] == [16, 32, 32]
    arch = card["train_config"]["arch"]
    assert arch["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert arch["text_time_embedding"] and arch["embedding_std"] == 1.0 and arch["prediction_type"] == "epsilon"
    scheduler = json.loads((results / "models/shapes/trained/scheduler/scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"  # not the default: the rule passes the key on
    assert card["train_config"]["noise_levels"] == {"distribution": "logistic", "loc": 1.0, "scale": 2.0}
    check = json.loads((results / "models/shapes/check.json").read_text())
    assert check["model"].endswith("models/shapes/trained") and check["n_test_images"] == 4
    assert {"loss_conditional", "loss_unconditional", "choice_relation", "choice_attribute", "samples"} <= set(check)
    assert check["layers"][:2] == ["down_blocks.0", "down_blocks.1"]
    for rule in ("prepare_dataset", "train_shapes_model", "check_model"):
        assert list((results / "logs" / rule).glob("*.log")) and list((results / "benchmarks" / rule).glob("*.tsv"))
    # nothing left to do: the run is complete and up to date
    again = run_snakemake(["-n"] + targets, tiny_overlay(results), tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
