"""Run the real workflow as a subprocess from the repository root, with a config overlay in a temp dir."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def tiny_overlay(results: Path, **extra) -> dict:
    """The test-config matrix's retraining config (tests/configs/retrain_and_check.yaml: a 60-image shapes world and
    a tiny shapes model retrained in a few steps) writing to ``results``, with top-level keys replaced by ``extra``."""
    text = (ROOT / "tests" / "configs" / "retrain_and_check.yaml").read_text()
    cfg = yaml.safe_load(text.replace("{tmp}", str(Path(results).parent)))
    cfg["results"] = str(results)
    cfg.update(extra)
    return cfg


def run_snakemake(args, overlay: dict | None = None, tmp: Path | None = None, check=True, timeout=600):
    cmd = [SNAKEMAKE, *args, "--cores", "2"]  # --configfile takes several values: keep it last
    if overlay is not None:
        path = Path(tmp) / "overlay.yaml"
        path.write_text(yaml.safe_dump(overlay))
        cmd += ["--configfile", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc
