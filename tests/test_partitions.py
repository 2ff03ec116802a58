"""What every job asks of SLURM, without SLURM: dry runs (``snakemake -n``, which prints each job's resources) of
config.yaml and of every paper config in configs/ through profiles/slurm with its SITE partition lines filled in.
Besides ``all``, the dry runs name the first extraction shard of every (model, data set) and each shapes model's
training, so that the jobs behind the plan_shards checkpoint, and train_shapes_model, are listed too.

Checked: every job that asks for a GPU (gpu=1) goes to the GPU partition and every other job to the CPU partition
(rules/common.smk gpu_job: derived from each job's own request, not from a list of rules); no job asks more runtime on
its first attempt than the profile states; docs/cluster.md's CPU-only check leaves no job asking for a GPU.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from workflows.runs import ROOT, PrintedJob, printed_jobs, run, snakemake_cmd, write_config

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]
#: the SITE partition lines of profiles/slurm, filled in as a site would
PARTITIONS = {"slurm_partition": "cpu-test", "gpu_jobs_partition": "gpu-test"}
#: and its GPU type line
GPU_MODEL = {"gpu_jobs_model": "a100"}
#: the rules whose jobs ask for a GPU (a rule named after a model as <model>): the dry runs of CONFIGS together must
#: list a job of each, so that none goes unchecked
GPU_RULES = {"train_shapes_model", "check_model", "encode_latents", "extract_activations_<model>",
             "train_diffc_<model>", "baseline_probes", "pca_views", "train_sae", "score_aro", "localize_words",
             "word_maps", "intervene_words", "mmse_curves", "steer_latents"}
#: the network stays off (the dry runs name hub models but fetch nothing)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def site_profile(folder: Path, **settings) -> Path:
    """profiles/slurm copied into ``folder``, with ``settings`` added to its default-resources."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"].update(settings)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def job_targets(cfg: dict) -> list[str]:
    """``all``, one activation file of shard 0 of every extraction (model, data set) (its latents job comes with it),
    and the trained model of every shapes model: plan_shards is a checkpoint, so a dry run of ``all`` alone lists
    no job after it, and a shipped shapes model is not trained by ``all``."""
    from difflens.extract.layout import activation_path

    extraction = cfg.get("extraction", {})
    models = extraction.get("models") or list(cfg["models"])
    first = {m: (cfg["models"][m]["timesteps"][0], cfg["models"][m]["layers"][0]) for m in models}
    shards = [activation_path(cfg["results"], m, ds, *first[m], 0)
              for m in models for ds in extraction.get("datasets", [])]
    trained = [f"{cfg['results']}/models/{name}/trained/difflens_model.json"
               for name, m in cfg["models"].items() if m["kind"] == "shapes"]
    return ["all", *map(str, shards), *trained]


def dry_run(config: Path, tmp: Path, profile: Path, *options: str) -> list[PrintedJob]:
    """Every job of a dry run of ``config`` through ``profile`` (results and model cache under ``tmp``), with
    ``options`` added to the command line."""
    cfg = yaml.safe_load(config.read_text())
    cfg.update(results=str(tmp / "results"), model_cache=str(tmp / "model_cache"))
    tmp.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp, cfg)
    proc = run(snakemake_cmd(job_targets(cfg), path, *options,  # before the flags: --set-resources takes a list
                             "-n", "--profile", str(profile), "--replace-workflow-config"), env=OFFLINE)
    jobs = printed_jobs(proc.stdout + proc.stderr)
    assert jobs, f"the dry run of {config.name} listed no job:\n{proc.stdout[-2000:]}"
    return jobs


def asks_gpu(job: PrintedJob) -> bool:
    return int(job.resources.get("gpu", 0)) > 0


def rule_family(rule: str) -> str:
    """The rule's name, in the rules made once per configured model with the model's name replaced by <model>."""
    return re.sub(r"^(extract_activations|train_diffc)_.+$", r"\1_<model>", rule)


def stated_max_runtime() -> int:
    """The runtime (minutes) that profiles/slurm says no job of the paper configs asks more than."""
    found = re.findall(r"no job of the paper configs asks more than (\d+) minutes", PROFILE.read_text())
    assert len(found) == 1, f"{PROFILE} states its maximum runtime {len(found)} times, not once"
    return int(found[0])


def documented_cpu_only_resources() -> list[str]:
    """The --set-resources values of docs/cluster.md's CPU-only check of the shapes world (its one bash line with
    ``gpu=0`` settings, backslash continuations joined)."""
    text = CLUSTER_DOC.read_text()
    commands = [" ".join(line.rstrip("\\").strip() for line in block.splitlines())
                for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if ":gpu=0" in block]
    assert len(commands) == 1, f"{CLUSTER_DOC} has {len(commands)} commands with :gpu=0 settings, not one"
    words = shlex.split(commands[0])
    values = words[words.index("--set-resources") + 1:]
    return values[:next((i for i, w in enumerate(values) if w.startswith("-")), len(values))]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, list[PrintedJob]]:
    """The jobs of the dry run of each of CONFIGS (by file name) through profiles/slurm with PARTITIONS and
    GPU_MODEL set."""
    tmp = tmp_path_factory.mktemp("partitions")
    profile = site_profile(tmp / "profile", **PARTITIONS, **GPU_MODEL)
    return {config.name: dry_run(config, tmp / config.stem, profile) for config in CONFIGS}


def test_every_gpu_job_and_no_other_goes_to_the_gpu_partition(jobs):
    for name, listed in jobs.items():
        wrong = [(job.rule, job.wildcards, job.resources.get("slurm_partition")) for job in listed
                 if job.resources.get("slurm_partition") != PARTITIONS["gpu_jobs_partition" if asks_gpu(job) else
                                                                       "slurm_partition"]]
        assert not wrong, f"{name}: jobs on the wrong partition (rule, wildcards, partition): {wrong[:10]}"
        untyped = [(job.rule, job.wildcards) for job in listed
                   if (job.resources.get("gpu_model") == GPU_MODEL["gpu_jobs_model"]) != asks_gpu(job)]
        assert not untyped, f"{name}: jobs with a GPU and no gpu_model, or a gpu_model and no GPU: {untyped[:10]}"
    reached = {rule_family(job.rule) for listed in jobs.values() for job in listed if asks_gpu(job)}
    assert reached == GPU_RULES, f"GPU rules listed: {sorted(reached)}; expected {sorted(GPU_RULES)}"


def test_no_job_asks_more_runtime_than_the_profile_states(jobs):
    limit = stated_max_runtime()
    for name, listed in jobs.items():
        over = {(job.rule, int(job.resources["runtime"])) for job in listed if int(job.resources["runtime"]) > limit}
        assert not over, f"{name}: first attempts over {limit} minutes (rule, minutes): {sorted(over)}"
    browser = [int(job.resources["runtime"]) for job in jobs["revelio.yaml"] if job.rule == "feature_browser"]
    assert browser == [30 + 480]  # 30 minutes and one per SAE: 3 models x 4 data sets x 2 runs x 20 layer-timesteps


def test_gres_sites_and_an_unset_gpu_partition(jobs, tmp_path):
    """With gpu_jobs_gres, the jobs of the GPU rules ask for that gres and carry no gpu (the plugin refuses both);
    without gpu_jobs_partition they go to slurm_partition, as every other job does."""
    profile = site_profile(tmp_path / "profile", slurm_partition="cpu-test", gpu_jobs_gres="gpu:a100:1")
    listed = dry_run(ROOT / "config.yaml", tmp_path, profile)
    gres = sorted((job.rule, job.wildcards) for job in listed if job.resources.get("gres") == "gpu:a100:1")
    assert gres == sorted((job.rule, job.wildcards) for job in jobs["config.yaml"] if asks_gpu(job))
    assert not any(asks_gpu(job) or "gpu_model" in job.resources for job in listed)
    assert {job.resources.get("slurm_partition") for job in listed} == {"cpu-test"}


def test_documented_cpu_only_check_asks_no_job_for_a_gpu(tmp_path):
    """docs/cluster.md's shapes-world check, dry-run through profiles/slurm with PARTITIONS and GPU_MODEL set: no
    job asks for a GPU (nor names a GPU type, which the plugin would ask as --gpus=<type>:0), so every job goes to
    the CPU partition."""
    settings = documented_cpu_only_resources()
    profile = site_profile(tmp_path / "profile", **PARTITIONS, **GPU_MODEL)
    listed = dry_run(ROOT / "config.yaml", tmp_path, profile, "--set-resources", *settings)
    assert not [job.rule for job in listed if asks_gpu(job) or "gpu_model" in job.resources]
    assert {job.resources.get("slurm_partition") for job in listed} == {PARTITIONS["slurm_partition"]}
