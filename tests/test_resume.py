"""Kill and resume, per long rule: a job stopped half-way and run again gives what an uninterrupted job gives.

* Rules that resume from their own state, tested on their library functions with the interruption injected (an
  exception after N units of work, or the bytes a kill leaves behind): ``score_aro`` (ARO's partial CSV),
  ``localize_words`` (the partial record file), ``train_diffc`` (the per-epoch checkpoint). A partial file made with
  other settings is refused, naming both; a torn last write is cut off and the rerun equals the uninterrupted run.
* Rules that start afresh (``train_sae``, ``intervene_words``, ``render_figure``), tested on the real workflow: one
  tiny results folder (module fixture) is made once; per rule, its outputs are deleted and a run is killed (Snakemake
  and the job, SIGKILL) when the job opens its next output, so that some of its outputs are on disk. Snakemake must
  refuse those (an incomplete job's outputs) and the rerun must give the reference's outputs again.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difflens.classify import diffc
from difflens.info import localize_shards
from difflens.info.aro import score_shard
from difflens.info.estimators import LogSNRSampler
from difflens.info.localize_shards import localize_rows, localize_shard
from difflens.info.records import read_records, settings_path
from test_classify import two_heads
from test_infodecomp import V, StopAfter, toy_aro, word_world  # noqa: F401 (fixtures)
from workflows.runs import (ROOT, assert_same_digests, output_digests, printed_jobs, run, snakemake_cmd,
                           write_config)

FAULTS = Path(__file__).parent / "workflows" / "faults"
ARO_DRAWS = dict(n_draws=5, sampler=LogSNRSampler(0, 2, 3), seed=0, batch_size=4, progress=False)
CALLS_PER_IMAGE = 4  # denoiser calls of one toy ARO image at batch size 4 (StopAfter counts them)


# ---- score_aro ----------------------------------------------------------------------------------------------------
def aro_killed_after(tmp: Path, ds, rows, images: int) -> Path:
    """ARO's partial file of a shard killed in its image ``images + 1`` (``images`` images scored)."""
    with pytest.raises(RuntimeError, match="killed"):
        score_shard(StopAfter(V, 0.5, stop_at=images * CALLS_PER_IMAGE + 2), ds, rows, tmp / "r.csv", **ARO_DRAWS)
    return tmp / "r.csv.partial"


def test_aro_partial_of_other_settings_is_refused(tmp_path, toy_aro):  # noqa: F811
    """Killed with n_draws 5 / seed 0, rerun with n_draws 50 / seed 7: a ValueError names the file, both settings
    and what to delete; a partial file without its settings file is refused too; done, neither file is left."""
    ds, rows = toy_aro
    partial = aro_killed_after(tmp_path, ds, rows, 2)
    with pytest.raises(ValueError) as err:
        score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "r.csv", **{**ARO_DRAWS, "n_draws": 50, "seed": 7})
    message = str(err.value)
    assert str(partial) in message and f"delete {partial}" in message
    assert "n_draws: 5 there, 50 now" in message and "seed: 0 there, 7 now" in message
    assert "'stratified'" not in message  # only the settings that differ
    settings_path(partial).unlink()
    with pytest.raises(ValueError, match=f"{partial}: a partial file without its settings file"):
        score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "r.csv", **ARO_DRAWS)
    partial.unlink()
    score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "r.csv", **ARO_DRAWS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


@pytest.mark.parametrize("cut", ["inside a line", "at a line's end", "inside the header"])
def test_aro_resumes_past_a_torn_write_to_the_uninterrupted_result(tmp_path, toy_aro, caplog, cut):  # noqa: F811
    """A kill during the write of image 4's two lines leaves part of them (or, during the first write, part of the
    header): the rerun cuts them off with a warning, scores the rest, and writes the uninterrupted run's bytes."""
    ds, rows = toy_aro
    whole = score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "whole.csv", **ARO_DRAWS)
    (tmp_path / "four").mkdir()
    four = aro_killed_after(tmp_path / "four", ds, rows, 4).read_bytes()
    partial = aro_killed_after(tmp_path, ds, rows, 3)
    three = partial.read_bytes()
    image4 = four[len(three):]
    torn = {"inside a line": three + image4[:len(image4) // 2],
            "at a line's end": three + image4[:image4.index(b"\n") + 1],
            "inside the header": three[:7]}[cut]
    partial.write_bytes(torn)
    with caplog.at_level(logging.WARNING, logger="difflens.info.aro"):
        again = score_shard(StopAfter(V, 0.5), ds, rows, tmp_path / "r.csv", **ARO_DRAWS)
    assert f"{partial}: dropping a torn end" in caplog.text
    pd.testing.assert_frame_equal(again, whole, check_exact=True)
    assert (tmp_path / "r.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


# ---- localize_words -----------------------------------------------------------------------------------------------
LOCALIZE = dict(n_draws=2, sampler=LogSNRSampler(0, 2, 3), seed=0, batch_size=64, n_thresholds=6, progress=False)


@pytest.fixture(scope="module")
def word_shard(word_world):  # noqa: F811
    """The word rows of three test images of the shapes world, with the data set and the model."""
    ds, model = word_world
    rows = localize_rows(ds, {"split": "test", "calibration_split": "test", "max_images": 3})
    return ds, model, rows


def localize_killed_after(tmp: Path, word_shard, images: int, monkeypatch, **settings) -> Path:
    """The partial file of a localization shard killed in its image ``images + 1`` (``images`` images appended)."""
    ds, model, rows = word_shard
    real, calls = localize_shards.image_record, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) > images:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="killed"):
        patch.setattr(localize_shards, "image_record", dying)
        localize_shard(model, ds, rows, tmp / "r.npz", **{**LOCALIZE, **settings})
    return tmp / "r.npz.partial"


def test_localization_partial_of_other_settings_is_refused(tmp_path, word_shard, monkeypatch, one_thread):
    """Killed after one image with 2 draws and seed 0, rerun with 3 draws and seed 7: refused, naming both."""
    ds, model, rows = word_shard
    partial = localize_killed_after(tmp_path, word_shard, 1, monkeypatch)
    assert len(read_records(partial)) == 1
    with pytest.raises(ValueError) as err:
        localize_shard(model, ds, rows, tmp_path / "r.npz", **{**LOCALIZE, "n_draws": 3, "seed": 7})
    message = str(err.value)
    assert str(partial) in message and f"delete {partial}" in message
    assert "n_draws: 2 there, 3 now" in message and "seed: 0 there, 7 now" in message


def test_localization_resumes_past_a_torn_record_to_the_uninterrupted_result(tmp_path, word_shard, caplog,
                                                                           monkeypatch, one_thread):
    """A kill during the append of image 2's record leaves half of it: the rerun cuts it off with a warning and
    gives the uninterrupted shard's arrays, exactly."""
    ds, model, rows = word_shard
    whole = localize_shard(model, ds, rows, tmp_path / "whole.npz", **LOCALIZE)
    partial = localize_killed_after(tmp_path, word_shard, 1, monkeypatch)
    one = partial.read_bytes()
    (tmp_path / "two").mkdir()
    two = localize_killed_after(tmp_path / "two", word_shard, 2, monkeypatch).read_bytes()
    partial.write_bytes(two[:len(one) + (len(two) - len(one)) // 2])
    with caplog.at_level(logging.WARNING, logger="difflens.info.records"):
        again = localize_shard(model, ds, rows, tmp_path / "r.npz", **LOCALIZE)
    assert f"{partial}: dropping a torn record after 1 complete ones" in caplog.text
    assert sorted(again) == sorted(whole)
    for key in whole:
        np.testing.assert_array_equal(again[key], whole[key], err_msg=key)
    assert not partial.exists() and not settings_path(partial).exists()


# ---- train_diffc --------------------------------------------------------------------------------------------------
class DiesAfter:
    """A multi-head feature source that raises after ``n`` training batches: a job killed in the middle of an
    epoch, its last checkpoint that of the epoch before."""

    def __init__(self, source, n: int):
        self.source, self.left = source, n

    def __getattr__(self, name):
        return getattr(self.source, name)

    def batches(self, split, batch_size, *, epoch, train):
        for batch in self.source.batches(split, batch_size, epoch=epoch, train=train):
            if train:
                self.left -= 1
                if self.left < 0:
                    raise RuntimeError("killed")
            yield batch


def test_diffc_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """Two heads, 4 epochs of 3 batches: killed in epoch 3's second batch (a torn checkpoint write left beside the
    last good one), rerun from the work folder == the straight run (curves, accuracies, best epochs)."""
    settings = diffc.DiffCSettings(epochs=4, lr=1e-3, width=8, batch_size=16, dropout=0.5, seed=5)
    straight = diffc.train_diffc_heads(two_heads(), 4, settings, progress=False)
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="killed"):
        diffc.train_diffc_heads(DiesAfter(two_heads(), 2 * 3 + 1), 4, settings, work_dir=work, progress=False)
    (work / (diffc.CHECKPOINT + ".tmp")).write_bytes(b"PK\x03\x04 torn")  # a kill inside save_checkpoint
    resumed = diffc.train_diffc_heads(two_heads(), 4, settings, work_dir=work, progress=False)
    keys = ("curves", "val_accuracy", "test_accuracy", "best_epoch", "epochs")
    assert {h: {k: resumed[h][k] for k in keys} for h in resumed} == \
        {h: {k: straight[h][k] for k in keys} for h in straight}


# ---- rules that start afresh, on the real workflow ----------------------------------------------------------------
#: a 40-image shapes world through the shipped shapes model: one layer and timestep extracted for a 5-step k-SAE,
#: one image edited in 2 steps, and the intervention table's figure
TINY = {
    "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 40}}},
    "models": {"shapes": {"kind": "shapes", "source": "resources/shapes_model", "layers": ["mid_block"],
                          "timesteps": [25]}},
    "extraction": {"datasets": ["shapes"], "save_maps": False},
    "classify": {"targets": []},
    "pca": {"views": []},
    "steer": {"targets": []},
    "sae": {"runs": {"tiny": {"k": 2, "expansion": 1, "steps": 5, "batch_size": 4, "dead_steps": 4,
                              "dead_passes": 2}}},
    "infodecomp": {"n_draws": 2, "batch_size": 8, "models": ["shapes"], "aro": {"datasets": []},
                   "localize": {"datasets": []},
                   "intervene": {"datasets": ["shapes"], "max_images": 1, "steps": 2, "n_boot": 100}},
}
SAE = "sae/shapes/shapes/tiny/pooled/t25/mid_block"
INFO = "info/shapes/shapes"
FIGURE = "figures/infodecomp/table4"
#: per rule: its outputs (in the order it writes them), the one it is killed at (before opening it for writing),
#: and the jobs its rerun runs
VICTIMS = {
    "train_sae": ([f"{SAE}/sae.safetensors", f"{SAE}/sae_config.json", f"{SAE}/curve.csv"], f"{SAE}/curve.csv",
                  ["train_sae"]),
    "intervene_words": ([f"{INFO}/intervention_items.csv", f"{INFO}/intervention.csv",
                         f"{INFO}/intervention_maps.npz"], f"{INFO}/intervention.csv",
                        ["intervene_words", "render_figure"]),
    "render_figure": ([f"{FIGURE}.png", f"{FIGURE}.pdf", f"{FIGURE}.csv"], f"{FIGURE}.csv", ["render_figure"]),
}
#: matplotlib stamps a PDF with the time it was written unless SOURCE_DATE_EPOCH fixes it
ENV = {"SOURCE_DATE_EPOCH": "0"}


def local(results: Path, configfile: Path, *options) -> list[str]:
    """The command that makes every victim's outputs."""
    targets = [results / p for outputs, _, _ in VICTIMS.values() for p in outputs]
    return snakemake_cmd(targets, configfile, "--profile", "profiles/local", "--cores", "2", *options)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny workflow run once, uninterrupted: (results, config file, digests of its outputs)."""
    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = write_config(tmp, {"results": str(tmp / "results"), **TINY})
    run(local(tmp / "results", cfg), env=ENV)
    return tmp / "results", cfg, output_digests(tmp / "results")


@pytest.mark.xdist_group("resume_workflow")  # one worker: the tiny workflow (a module fixture) runs once
@pytest.mark.parametrize("rule", list(VICTIMS))
def test_job_killed_after_part_of_its_outputs_is_rerun_to_the_same_outputs(tmp_path, tiny_run, rule):
    """The rule's outputs deleted, then Snakemake and the job killed as the job opens one output, the ones before it
    written: Snakemake refuses them (a dry run without rerun-incomplete names them as incomplete); the rerun runs
    the job (and what reads it) and every output equals the uninterrupted run's."""
    results, cfg, reference = tiny_run
    outputs, at, rerun_jobs = VICTIMS[rule]
    for path in outputs:
        (results / path).unlink()
    fault = {**ENV, "PYTHONPATH": str(FAULTS), "DIFFLENS_FAULT_SCRIPT": f"{rule}.py",
             "DIFFLENS_FAULT_COUNTER": str(tmp_path / "attempts"), "DIFFLENS_FAULT_AT_OPEN": f"/{at}",
             "DIFFLENS_FAULT_KILL": "run"}
    # --nolock: the killed Snakemake leaves no lock to lift (test_faults.py covers `--unlock`)
    killed = subprocess.run(local(results, cfg, "--nolock"), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **fault}, start_new_session=True)
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    written = outputs[:outputs.index(at)]
    assert [p for p in outputs if (results / p).exists()] == written, "the job was not cut off half way"

    dry = run(snakemake_cmd([results / p for p in outputs], cfg, "-n", "--cores", "1"), env=ENV, check=False)
    refused = dry.stdout + dry.stderr
    assert dry.returncode != 0 and "IncompleteFilesException" in refused, refused[-3000:]
    assert all(str(results / p) in refused for p in written)

    rerun = run(local(results, cfg), env=ENV)
    assert sorted(job.rule for job in printed_jobs(rerun.stdout + rerun.stderr)) == rerun_jobs
    assert_same_digests(output_digests(results), reference)
