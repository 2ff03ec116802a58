"""Changing one setting reruns only the jobs whose scripts read it.

Snakemake reruns a job whose params differ from the ones recorded when it ran (its params rerun trigger); each
rule's params hold only the config keys its script reads (``pick`` in rules/common.smk), so a key reaches exactly
those jobs and what reads their outputs. A tiny workflow runs once (a 40-image shapes world through the shipped
shapes model, one layer at one timestep: linear probes, a one-epoch Diff-C from the saved maps, ARO and word
localization with two draws); then each case changes one key in a copy of its config, and a dry run of the same
targets (Snakemake's default rerun triggers) lists the jobs that would run.
"""
import copy

import pytest

from workflows.runs import printed_jobs, run, snakemake_cmd, write_config

#: one worker runs every case, so that the tiny workflow (a module fixture) runs once
pytestmark = pytest.mark.xdist_group("rerun_scope")

TINY = {
    "datasets": {"shapes": {"source": "shapes", "params": {"n_images": 40}}},
    "models": {"shapes": {"kind": "shapes", "source": "resources/shapes_model", "layers": ["mid_block"],
                          "timesteps": [25]}},
    "extraction": {"datasets": ["shapes"], "save_maps": True},
    "classify": {"targets": ["label"], "probe_targets": ["label"], "mode": "cached", "group": "none", "epochs": 1,
                 "width": 4, "batch_size": 8, "augment": []},
    "pca": {"views": []},
    "steer": {"targets": []},
    "infodecomp": {"n_draws": 2, "batch_size": 8, "models": ["shapes"],
                   "aro": {"datasets": ["shapes"], "max_items": 1},
                   "localize": {"datasets": ["shapes"], "max_images": 1, "n_thresholds": 4, "ddim_steps": 2},
                   "intervene": {"datasets": []}},
}
TARGETS = ["classify/shapes/shapes/probes.csv", "classify/shapes/shapes/diffc/label/t25/mid_block.json",
           "info/shapes/shapes/aro.csv", "info/shapes/shapes/localization.csv"]
EXTRACTION_CHAIN = ["extract_activations_shapes", "index_activations", "probe_features", "train_diffc_shapes"]
#: case -> (the changed key's path in the config, its new value, the rules of the jobs a rerun runs, sorted)
CASES = {
    "nothing changed": ((), None, []),
    "classify.probe_targets": (("classify", "probe_targets"), ["label", "colour"], ["probe_features"]),
    "classify.epochs": (("classify", "epochs"), 2, ["train_diffc_shapes"]),
    "classify.targets": (("classify", "targets"), ["label", "colour"], []),  # new jobs only: not among TARGETS
    "infodecomp.aro.max_items": (("infodecomp", "aro", "max_items"), 2, ["collect_aro", "score_aro"]),
    "infodecomp.aro.min_group": (("infodecomp", "aro", "min_group"), 5, ["collect_aro"]),
    "infodecomp.intervene.steps": (("infodecomp", "intervene", "steps"), 3, []),
    "infodecomp.localize.n_thresholds": (("infodecomp", "localize", "n_thresholds"), 6,
                                         ["collect_localization", "localize_words"]),
    "infodecomp.n_draws": (("infodecomp", "n_draws"), 3, ["collect_aro", "collect_localization", "localize_words",
                                                          "score_aro"]),
    # the cost of a new layer or timestep: the model's extraction (every shard holds every layer x timestep) and
    # everything that reads it; the information stages do not
    "models.shapes.layers": (("models", "shapes", "layers"), ["mid_block", "up_blocks.1"], EXTRACTION_CHAIN),
    "models.shapes.timesteps": (("models", "shapes", "timesteps"), [25, 250], EXTRACTION_CHAIN),
}


def with_key(config: dict, path: tuple, value) -> dict:
    """A deep copy of ``config`` with the key at ``path`` (a tuple of keys; () = none) set to ``value``, the
    sections on the way created where the config leaves them out."""
    out = copy.deepcopy(config)
    if path:
        section = out
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny workflow run once: (temp folder, its config, the target paths)."""
    tmp = tmp_path_factory.mktemp("rerun_scope")
    config = {"results": str(tmp / "results"), **TINY}
    targets = [tmp / "results" / t for t in TARGETS]
    run(snakemake_cmd(targets, write_config(tmp, config), "--profile", "profiles/local", "--cores", "2"))
    return tmp, config, targets


@pytest.mark.parametrize("case", list(CASES))
def test_changing_one_key_reruns_only_the_jobs_that_read_it(tiny_run, case):
    tmp, config, targets = tiny_run
    path, value, rerun = CASES[case]
    cfg = write_config(tmp, with_key(config, path, value), name=f"{case}.yaml")
    dry = run(snakemake_cmd(targets, cfg, "-n", "--cores", "1"))
    assert sorted(job.rule for job in printed_jobs(dry.stdout + dry.stderr)) == rerun, dry.stdout[-3000:]
