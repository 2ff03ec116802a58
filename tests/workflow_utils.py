"""Run the real workflow as a subprocess from the repository root, with a config overlay in a temp dir."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def tiny_overlay(results: Path, **extra) -> dict:
    """A config overlay: a 60-image shapes world and a tiny shapes model retrained in a few steps."""
    cfg = {
        "results": str(results),
        "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 60}}},
        "models": {"shapes": {"kind": "shapes", "source": "resources/shapes_model", "retrain": True,
                              "layers": ["mid_block", "up_blocks.1"], "timesteps": [25, 500],
                              "train": {"steps": 3, "batch_size": 4, "block_out_channels": [16, 32, 32],
                                        "cross_attention": [True, True, False], "text_time_embedding": True,
                                        "embedding_std": 1.0, "text_width": 32, "prediction_type": "epsilon",
                                        "noise_levels": {"distribution": "logistic", "loc": 1.0}}}},
        "check": {"n_images": 4, "n_draws": 2, "batch_size": 16, "n_samples": 4, "sample_steps": 4},
    }
    for key, value in extra.items():
        cfg[key] = value
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
