# Validation first: a bad config stops here, before any job, with one message naming the key.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from difflens.config import ConfigError, LOCAL_SOURCES, validate_config

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

R = config["results"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    raw=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",


def dataset_json(name):
    return f"{R}/data/{name}/dataset.json"


def is_downloaded(name):
    """Data sets fetched from the network (the others are generated or read in place)."""
    return config["datasets"][name]["source"] not in LOCAL_SOURCES


def raw_name_of(name):
    """Raw download folder of a data set (data sets built from one download share it, e.g. coco2017)."""
    from difflens.data.sources import raw_name

    return raw_name(config["datasets"][name]["source"])


def get_raw_marker(wildcards):
    return [f"{R}/raw/{raw_name_of(wildcards.dataset)}/.done"] if is_downloaded(wildcards.dataset) else []


def download_options(raw):
    """Download options of the (first) configured data set that uses this raw download."""
    for name, ds in config["datasets"].items():
        if is_downloaded(name) and raw_name_of(name) == raw:
            return ds["download"]
    raise WorkflowError(f"no configured data set downloads into raw folder {raw!r}")


def model_dir(name):
    """Folder the model is loaded from: the retrained copy when models.<name>.retrain, else its source."""
    m = config["models"][name]
    return f"{R}/models/{name}/trained" if m["retrain"] else m["source"]


def get_model_marker(wildcards):
    """A file the model's jobs depend on (the retrained card), or none for a shipped or hub model."""
    m = config["models"][wildcards.model]
    return [f"{model_dir(wildcards.model)}/difflens_model.json"] if m["retrain"] else []


def shapes_models():
    return [n for n, m in config["models"].items() if m["kind"] == "shapes"]


def all_targets():
    targets = [dataset_json(name) for name in config["datasets"]]
    for name in shapes_models():
        targets += [f"{R}/models/{name}/check.json", f"{R}/models/{name}/samples.png"]
    targets += extraction_targets()
    return targets
