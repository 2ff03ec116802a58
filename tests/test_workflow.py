"""The workflow itself: dry runs of every config, lint, config errors before any job (real runs of the test-config
matrix: tests/test_config_matrix.py)."""

import pytest

from workflow_utils import ROOT, run_snakemake, tiny_overlay


def test_default_config_dry_run(tmp_path):
    out = run_snakemake(["-n", "--quiet", "rules"], {"results": str(tmp_path / "results")}, tmp_path)
    assert "prepare_dataset" in out.stdout + out.stderr and "check_model" in out.stdout + out.stderr


@pytest.mark.parametrize("config_file", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_dry_run(config_file, tmp_path):
    # results and model cache in a fresh folder: outputs of an earlier run here must not make the plan empty
    out = run_snakemake(["-n", "--configfile", str(config_file), "--replace-workflow-config", "--config",
                         f"results={tmp_path / 'results'}", f"model_cache={tmp_path / 'model_cache'}"])
    text = out.stdout + out.stderr
    assert "download_dataset" in text and "prepare_dataset" in text
    # every hub model's weights are fetched once, by a local job planned before anything else needs them
    import re

    import yaml

    cfg = yaml.safe_load(config_file.read_text())
    hub = {m["source"] for m in cfg["models"].values() if m["kind"] != "shapes"}
    hub |= {b["source"] for b in cfg.get("classify", {}).get("baselines", [])}  # the baselines' image models
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
    assert "config key models.shapes.kind" in out.stderr and "['shapes', 'sd', 'dit', 'sdxl', 'pixart', 'sd3', 'flux']" in out.stderr
    assert not (tmp_path / "results").exists()
