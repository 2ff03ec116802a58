"""The paper-size smoke run (configs/paper_smoke.yaml, `make paper-smoke`) without running it (it takes about an
hour of CPU): its DAG reaches every rule of the workflow, its stand-in models have the published architectures, and
its staged raw data pass the real download and conversion code without the network and give every stage the rows
it needs.

The dry run needs no weights: the models are hub ids (the config checks need no folder, and the memory requests of a
model not fetched yet count no weights), so neither the mirror nor the cache exists here.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

import paper_data
import paper_models
from workflows.runs import printed_jobs, run, snakemake_cmd, write_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "paper_smoke.yaml"
#: rules that only a shapes-world model (kind shapes) reaches; no paper config has one
SHAPES_ONLY_RULES = {"train_shapes_model", "check_model"}
#: parameters of the published checkpoints (the counts their model cards and papers give). DiT-XL/2: the paper's
#: 675,129,632 less its fixed 256 px position table (294,912; a buffer in diffusers), plus 27 more copies of the
#: shared timestep and class embedders (2,777,472 each), which the diffusers checkpoint keeps in every block
PUBLISHED_PARAMETERS = {
    "sd15_unet": 859_520_964, "sd21_base_unet": 865_910_724, "sd_vae": 83_653_863, "sd15_text_encoder": 123_060_480,
    "sd21_text_encoder": 340_387_840, "dit_xl_2_transformer": 675_129_632 - 294_912 + 27 * 2_777_472,
    "dinov2_base": 86_580_480,
}


def smoke_config(tmp: Path) -> tuple[Path, dict]:
    """The smoke config writing under ``tmp`` (results, model cache, hub mirror)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg.update(results=str(tmp / "results"), model_cache=str(tmp / "model_cache"), hub_mirror=str(tmp / "hub"))
    return write_config(tmp, cfg), cfg


def extraction_files(cfg: dict) -> list[str]:
    """Shard 0 (every data set has one) of the latents and of one activation file of every (model, data set):
    plan_shards is a checkpoint, so a dry run of `all` alone lists no job after it; named, these are listed."""
    from difflens.extract.layout import activation_path, latents_path

    out = []
    for name, m in cfg["models"].items():
        for ds in cfg["extraction"]["datasets"]:
            out += [latents_path(cfg["results"], name, ds, 0),
                    activation_path(cfg["results"], name, ds, m["timesteps"][0], m["layers"][0], 0)]
    return [str(p) for p in out]


def test_dry_run_reaches_every_rule(tmp_path):
    path, cfg = smoke_config(tmp_path)
    listed = set(run(snakemake_cmd([], path, "--list-rules", "--replace-workflow-config")).stdout.split())
    proc = run(snakemake_cmd(["all", *extraction_files(cfg)], path, "-n", "--cores", "2",
                             "--replace-workflow-config"), env={"HF_HUB_OFFLINE": "1"})
    reached = {job.rule for job in printed_jobs(proc.stdout + proc.stderr)}
    assert {"extract_activations_dit", "train_diffc_sd21", "download_model", "feature_browser"} <= listed
    assert reached <= listed and listed - reached == SHAPES_ONLY_RULES, sorted(listed - reached)
    assert not any((tmp_path / d).exists() for d in ("hub", "model_cache", "results/raw"))  # nothing fetched


def test_stand_in_models_have_the_published_sizes():
    """Built on the meta device (shapes only, no memory): the parameter count of every component."""
    tokenizer = paper_models.clip_tokenizer()
    assert tokenizer.model_max_length == 77 and len(tokenizer) <= paper_models.CLIP_VOCAB
    with torch.device("meta"):
        parts = {name: getattr(paper_models, name)(*([tokenizer] if "text" in name else []))
                 for name in PUBLISHED_PARAMETERS}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
    assert counts == PUBLISHED_PARAMETERS
    assert parts["sd21_text_encoder"].config.num_hidden_layers == 23
    assert parts["dit_xl_2_transformer"].config.sample_size * 8 == 512


def test_build_mirror_builds_once(tmp_path, monkeypatch):
    """A model is built in a side folder and renamed into place with its record; a second call skips it, and a
    half-built side folder left by an interrupted call is replaced."""
    def build(out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "weights.txt").write_text(f"{torch.rand(1).item():.6f}")

    monkeypatch.setattr(paper_models, "MODELS", {"org/stub": (build, 3)})
    (tmp_path / "org" / "stub.partial").mkdir(parents=True)
    (tmp_path / "org" / "stub.partial" / "leftover").write_text("")
    first = paper_models.build_mirror(tmp_path, log=lambda _: None)
    assert [r["hub_id"] for r in first] == ["org/stub"] and first[0]["seed"] == 3
    assert sorted(p.name for p in (tmp_path / "org").iterdir()) == ["stub", "stub.build.json"]
    torch.manual_seed(3)
    assert (tmp_path / "org/stub/weights.txt").read_text() == f"{torch.rand(1).item():.6f}"  # seeded
    said = []
    assert paper_models.build_mirror(tmp_path, log=said.append) == [] and "skipped" in said[0]
    with pytest.raises(KeyError, match="org/other"):
        paper_models.build_model(tmp_path, "org/other")


def test_staged_raw_data_download_offline_and_feed_every_stage(tmp_path, monkeypatch):
    """The staged raw folders pass each source's own download (nothing is fetched: the network is refused) and
    conversion, and the data sets give Diff-C and the probes every split with two classes to train on, ARO an
    item, localization images on both sides of its 2-fold cross-fit, and the intervention an omitted and a
    swapped word."""
    from difflens.config import validate_config
    from difflens.data.common import Dataset
    from difflens.data.registry import convert, download, raw_name
    from difflens.info.inputs import word_rows
    from difflens.info.intervene import edits_of
    from difflens.info.localize import folds
    from difflens.info.localize_shards import localize_rows

    def refuse(*args, **kwargs):
        raise AssertionError(f"the staged data needed the network: connect{args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    cfg = validate_config(smoke_config(tmp_path)[1])  # with the schema's defaults
    assert set(paper_data.stage_raw(tmp_path, log=lambda _: None)) == {raw_name(d["source"])
                                                                         for d in cfg["datasets"].values()}
    data = {}
    for name, ds in cfg["datasets"].items():
        raw = tmp_path / "raw" / raw_name(ds["source"])
        download(raw_name(ds["source"]), raw, **ds["download"])
        data[name] = Dataset.load(convert(ds["source"], raw, tmp_path / "data" / name, cfg["seed"],
                                          **ds["params"]).parent)
    for name in cfg["extraction"]["datasets"]:
        classes = data[name].samples.groupby("split")["label"].nunique().to_dict()
        assert min(classes.get(s, 0) for s in ("train", "val", "test")) >= 1 and classes["train"] >= 2, classes
    info = cfg["infodecomp"]
    for name in info["aro"]["datasets"]:
        assert len(data[name].aro) >= info["aro"]["max_items"] >= 1
    for name in info["localize"]["datasets"]:
        rows = localize_rows(data[name], info["localize"])
        held, how = folds(rows, info["localize"]["calibration_split"], cfg["seed"])
        assert how == "2-fold cross-fit" and 0 < held.sum() < len(held), (how, rows["sample_id"].tolist())
    edit = info["intervene"]
    for name in edit["datasets"]:
        rows = word_rows(data[name], [edit["split"]], edit["max_images"], need_masks=False)
        assert set(edits_of(rows, edit["swaps"], edit["words_per_image"])["edit"]) == {"omit", "swap"}
