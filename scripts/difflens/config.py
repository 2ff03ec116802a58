"""Config validation: the JSON schema (with defaults filled in) and the checks a schema cannot express.

``validate_config(cfg)`` raises one ``ConfigError`` whose message names the offending key, the bad value and the
allowed values, before any job runs. It imports no torch and reads no weights: model layers and timestep ranges
come from ``difflens.models.catalog``.
"""
from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from .extract.prompts import CLIP_PROMPT, LABEL, uses_label
from .models.catalog import (CLASS_KINDS, FLOW_KINDS, KIND_OPTIONS, LAYER_ALIASES, TEXT_KINDS, ModelConfigError,
                             check_architecture, config_folder, resolve_layer, static_layers, static_log_snr_range,
                             static_num_timesteps)
from .models.fetch import COMPONENT_FOLDERS, is_hub_id

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
MODEL_KINDS = tuple(LAYER_ALIASES)
#: loaders that need no download; the others are registered in difflens.data.registry
LOCAL_SOURCES = ("shapes", "imagefolder")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the allowed values."""


def dataset_sources() -> list[str]:
    from .data.registry import SOURCES

    return list(LOCAL_SOURCES) + sorted(SOURCES)


def _with_defaults(validator_class):
    """A validator class that fills in ``default`` values of object properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


#: keys that were renamed: (section path, old key) -> what replaces it
RENAMED = {("sae", "runs", "*", "dead_after"): "dead_steps (training steps) and dead_passes (passes over the "
                                               "training vectors): a latent is dead after the fewer of the two"}


def check_renamed(cfg: dict) -> None:
    """A ConfigError naming the replacement of any renamed key the config still sets."""
    for path, replacement in RENAMED.items():
        level = [(cfg, "")]
        for part in path[:-1]:
            level = [(v, f"{where}{k}.") for node, where in level if isinstance(node, dict)
                     for k, v in (node.items() if part == "*" else [(part, node.get(part))])]
        for node, where in level:
            if isinstance(node, dict) and path[-1] in node:
                raise ConfigError(f"config key {where}{path[-1]}: renamed; use {replacement}")


def _types(schema: dict) -> set[str]:
    """The JSON types a (sub)schema admits, its anyOf / oneOf branches included."""
    named = schema.get("type", [])
    out = {named} if isinstance(named, str) else set(named)
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(branch)
    return out


def _from_text(text: str, types: set[str]):
    """The number, boolean or null that ``text`` spells where ``types`` ask for one and admit no string; else
    ``text`` as it is (the schema then names the key)."""
    if "string" in types:
        return text
    if types & {"integer", "number"}:
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    words = {"true": True, "false": False} if "boolean" in types else {}
    words.update({"null": None, "~": None} if "null" in types else {})
    return words.get(text.lower(), text)


def scalars_from_text(value, schema: dict):
    """``value`` with the numbers, booleans and nulls that arrived as text turned back into them, where the schema
    asks for those: Snakemake reads the nested values of ``--config key={...}`` as text (YAML's base loader)."""
    if isinstance(value, str):
        return _from_text(value, _types(schema))
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: scalars_from_text(v, props.get(k, extra if isinstance(extra, dict) else {}))
                for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [scalars_from_text(v, schema["items"]) for v in value]
    return value


def validate_schema(cfg: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Validate against the schema in place, filling defaults; one ConfigError naming the key on failure."""
    check_renamed(cfg)
    schema = yaml.safe_load(Path(schema_path).read_text())
    typed = scalars_from_text(cfg, schema)
    cfg.clear()
    cfg.update(typed)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        raise ConfigError(f"config key {_key(err.absolute_path)}: {err.message}")
    return cfg


def check_imagefolder(name: str, params: dict) -> None:
    """An image-folder data set's folder and captions file exist (checked before any job)."""
    key = f"config key datasets.{name}.params"
    if "path" not in params:
        raise ConfigError(f"{key}.path: an imagefolder data set needs the folder path")
    folder = Path(params["path"])
    if not folder.is_dir():
        raise ConfigError(f"{key}.path: {str(folder)!r} is not a folder (one subfolder of images per class)")
    for file_key in ("captions", "choices"):
        given = params.get(file_key)
        if given is not None and not (folder / given).is_file():
            raise ConfigError(f"{key}.{file_key}: {str(given)!r} is not a file (relative to {str(folder)!r}, or "
                              f"absolute)")


def check_config(cfg: dict) -> None:
    """Semantic checks on a schema-valid config (model kinds, layers, timesteps, SAE k, loaders, references)."""
    sources = dataset_sources()
    for name, ds in cfg["datasets"].items():
        if ds["source"] not in sources:
            raise ConfigError(f"config key datasets.{name}.source: data set {name!r} has no loader "
                              f"{ds['source']!r}; allowed: {sources}")
        if ds["source"] == "imagefolder":
            check_imagefolder(name, ds["params"])
    for name, m in cfg["models"].items():
        key = f"models.{name}"
        if m["kind"] not in MODEL_KINDS:
            raise ConfigError(f"config key {key}.kind: unknown model kind {m['kind']!r}; allowed: {list(MODEL_KINDS)}")
        if m["kind"] in COMPONENT_FOLDERS and not (Path(m["source"]).is_dir() or is_hub_id(m["source"])):
            raise ConfigError(f"config key {key}.source: {m['source']!r} is neither a local folder nor a hub id "
                              f"(org/name)")
        folder = config_folder(m["source"], cfg["model_cache"], cfg["hub_mirror"])
        try:
            check_architecture(m["kind"], m["source"], folder)
        except ModelConfigError as exc:
            raise ConfigError(f"config key {key}.kind: {exc}") from None
        described = str(folder) if folder else m["source"]  # where the model's configs are on disk
        for layer in m["layers"]:
            try:
                resolve_layer(m["kind"], m["source"], layer, available=static_layers(m["kind"], described))
            except ModelConfigError as exc:
                raise ConfigError(f"config key {key}.layers: {exc}") from None
        bad = sorted(set(m["options"]) - set(KIND_OPTIONS.get(m["kind"], ())))
        if bad:
            raise ConfigError(f"config key {key}.options: {bad} are not options of kind {m['kind']!r}; allowed: "
                              f"{list(KIND_OPTIONS.get(m['kind'], ()))}")
        n_t = static_num_timesteps(described)
        for t in m["timesteps"]:
            if not 0 <= t < n_t:
                units = " (flow matching: t = 1000 s)" if m["kind"] in FLOW_KINDS else ""
                raise ConfigError(f"config key {key}.timesteps: timestep {t} is outside the scheduler's range; "
                                  f"allowed: 0..{n_t - 1}{units}")
        if m["kind"] == "shapes" and m["retrain"] and m["train"]["dataset"] not in cfg["datasets"]:
            raise ConfigError(f"config key {key}.train.dataset: {m['train']['dataset']!r} is not a configured data "
                              f"set; allowed: {list(cfg['datasets'])}")
        train = m.get("train", {})
        widths, attention = train.get("block_out_channels", []), train.get("cross_attention", [])
        if m["kind"] == "shapes" and len(attention) != len(widths):
            raise ConfigError(f"config key {key}.train.cross_attention: one flag per resolution level is needed, "
                              f"{len(widths)} (as many as train.block_out_channels), got {len(attention)}")
        if m["kind"] == "shapes" and m["resolution"]:
            raise ConfigError(f"config key {key}.resolution: a shapes model works at the image size it was trained "
                              f"on; leave resolution null (got {m['resolution']})")
        if m["kind"] != "shapes" and m["retrain"]:
            raise ConfigError(f"config key {key}.retrain: only models of kind 'shapes' can be trained by difflens")
    ex = cfg["extraction"]
    for key, pool in (("datasets", cfg["datasets"]), ("models", cfg["models"])):
        for name in ex[key]:
            if name not in pool:
                raise ConfigError(f"config key extraction.{key}: {name!r} is not configured; allowed: {list(pool)}")
    check_classify(cfg)
    check_prompt(cfg)
    check_sae(cfg)
    check_infodecomp(cfg)
    check_steer(cfg)


def info_models(cfg: dict, task: str | None = None) -> list[str]:
    """The models the information stages score: ``infodecomp.models``, or every text model. For a ``task`` that
    reads captions (every one but ``localize``), its text models only: a class-conditional model (``CLASS_KINDS``)
    localizes its class labels and nothing else."""
    names = cfg["infodecomp"]["models"] or [n for n, m in cfg["models"].items() if m["kind"] in TEXT_KINDS]
    if task in (None, "localize"):
        return names
    return [n for n in names if cfg["models"][n]["kind"] in TEXT_KINDS]


#: the information tasks (infodecomp.<task>) and the data-set table each reads
INFO_TASK_TABLES = {"aro": "aro", "localize": "words", "intervene": "words", "maps": "words"}
#: what a table holds, and how a data set gets one
TABLE_HELP = {
    "words": ("the words of each image's caption", "give the images captions in an imagefolder data set (params."
              "captions, a CSV with columns image and caption, or params.caption_template)"),
    "aro": ("candidate captions per image", "give an imagefolder data set params.choices (a CSV with columns image, "
            "caption and negatives)"),
}


def check_task_dataset(task: str, name: str, dataset: dict) -> None:
    """A ConfigError unless data set ``name`` writes the table that information task ``task`` reads, naming the
    config key, the data set, the missing file and how to provide it (``data.registry.tables_of``)."""
    from .data.registry import SOURCE_TABLES, tables_of

    table = INFO_TASK_TABLES[task]
    if table in tables_of(dataset["source"], dataset["params"]):
        return
    what, how = TABLE_HELP[table]
    writers = [source for source, tables in SOURCE_TABLES.items() if table in tables and source != "imagefolder"]
    how = f"{how}, or use a source that writes one ({', '.join(writers)})"
    if dataset["source"] == "imagefolder":  # only aro.csv can be missing: words.csv comes from any captions
        how = (f"set datasets.{name}.params.choices to a CSV with columns image, caption and negatives (a JSON "
               "list or |-separated)")
    raise ConfigError(f"config key infodecomp.{task}.datasets: data set {name!r} (source {dataset['source']}) writes "
                      f"no {table}.csv ({what}), which infodecomp.{task} reads; to provide it, {how} "
                      f"(docs/own-data.md)")


def draw_counts(info: dict) -> list[int]:
    """``infodecomp.n_draws`` as the ascending list of its draw counts (one count: ``[n]``). The estimators run the
    largest; the localization also reports the maps of the smaller ones, from the first draws of the same run."""
    n = info["n_draws"]
    return sorted({int(v) for v in n}) if isinstance(n, list) else [int(n)]


def check_infodecomp(cfg: dict) -> None:
    """infodecomp names text models and configured data sets that write the table each task reads; the log-SNR
    interval stays inside the trained range of every model an estimator runs on (the information stages' models,
    and every shapes model's check)."""
    info = cfg["infodecomp"]
    for name in info["models"]:
        if name not in cfg["models"]:
            raise ConfigError(f"config key infodecomp.models: {name!r} is not configured; allowed: "
                              f"{list(cfg['models'])}")
        kind = cfg["models"][name]["kind"]
        if kind not in TEXT_KINDS + CLASS_KINDS:
            raise ConfigError(f"config key infodecomp.models: model {name!r} (kind {kind}) has no conditional "
                              f"denoiser with an empty-prompt (unconditional) branch; allowed kinds: "
                              f"{list(TEXT_KINDS + CLASS_KINDS)}")
    classes = [n for n in info["models"] if cfg["models"][n]["kind"] in CLASS_KINDS]
    for task in ("aro", "intervene", "maps", "mmse"):
        if classes and info[task]["datasets"] and not info_models(cfg, task):
            raise ConfigError(f"config key infodecomp.{task}.datasets: {task} reads captions, and the information "
                              f"models {classes} are class-conditional (kind dit: class labels, not captions); add a "
                              f"text model to infodecomp.models, or leave infodecomp.{task}.datasets empty (a "
                              f"class-conditional model localizes its class labels: infodecomp.localize)")
    for stage in INFO_TASK_TABLES:
        for ds in info[stage]["datasets"]:
            if ds not in cfg["datasets"]:
                raise ConfigError(f"config key infodecomp.{stage}.datasets: {ds!r} is not a configured data set; "
                                  f"allowed: {list(cfg['datasets'])}")
            check_task_dataset(stage, ds, cfg["datasets"][ds])
    for ds in info.get("mmse", {}).get("datasets", []):  # captions come from samples.csv: any data set
        if ds not in cfg["datasets"]:
            raise ConfigError(f"config key infodecomp.mmse.datasets: {ds!r} is not a configured data set; allowed: "
                              f"{list(cfg['datasets'])}")
    if len(draw_counts(info)) > 1 and info["stratified"]:
        raise ConfigError(f"config key infodecomp.n_draws = {info['n_draws']} asks for nested draw counts, which "
                          f"need independent draws (the first 50 of 100 are the 50-draw estimate); stratified draws "
                          f"depend on the count: set infodecomp.stratified: false, or give one count")
    lo, hi = info["loc"] - info["clip"] * info["scale"], info["loc"] + info["clip"] * info["scale"]
    for name in dict.fromkeys(info_models(cfg) + [n for n, m in cfg["models"].items() if m["kind"] == "shapes"]):
        mn, mx = static_log_snr_range(cfg["models"][name]["source"], cfg["models"][name]["kind"])
        if lo < mn - 1e-6 or hi > mx + 1e-6:
            raise ConfigError(f"config keys infodecomp.loc, infodecomp.scale, infodecomp.clip = {info['loc']}, "
                              f"{info['scale']}, {info['clip']} give log-SNR draws in [{lo:.2f}, {hi:.2f}], outside "
                              f"the range {mn:.2f} .. {mx:.2f} that model {name!r} was trained on; lower clip or "
                              f"scale, or move loc")


def sae_run_defaults(schema_path: Path = SCHEMA_PATH) -> dict:
    """The default of every setting of an SAE run (``sae.runs.<name>``), from the schema."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    run = schema["properties"]["sae"]["properties"]["runs"]["additionalProperties"]["properties"]
    return {key: sub["default"] for key, sub in run.items()}


def check_sae(cfg: dict) -> None:
    """sae names extraction models, their layers and timesteps; spatial input needs saved maps; every run gets its
    defaults filled in."""
    ex, sae = cfg["extraction"], cfg["sae"]
    check_selection(cfg, "sae")
    if "spatial" in sae["inputs"] and not ex["save_maps"]:
        raise ConfigError("config key sae.inputs: spatial reads the saved maps; set extraction.save_maps: true, or "
                          "use inputs: [pooled]")
    defaults = sae_run_defaults()
    for name, run in sae["runs"].items():
        for key, value in defaults.items():
            run.setdefault(key, value)
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"config key sae.runs: run name {name!r} must be letters, digits, _ or -")


def check_steer(cfg: dict) -> None:
    """Every steered SAE (steer.targets) is one the sae section trains: an SAE model, an extraction data set, a run,
    an input, and a layer and timestep that the sae section selects; the edit settings are consistent."""
    sae, st = cfg["sae"], cfg["steer"]
    models = [m for m in sae["models"] or cfg["extraction"]["models"] or list(cfg["models"])]
    for i, v in enumerate(st["targets"]):
        key = f"config key steer.targets[{i}]"
        if v["model"] not in models:
            raise ConfigError(f"{key}.model: {v['model']!r} has no SAEs; allowed: {models}")
        m = cfg["models"][v["model"]]
        allowed = {"dataset": cfg["extraction"]["datasets"], "run": list(sae["runs"]), "input": sae["inputs"],
                   "layer": [l for l in m["layers"] if not sae["layers"] or l in sae["layers"]],
                   "timestep": [t for t in m["timesteps"] if not sae["timesteps"] or t in sae["timesteps"]]}
        for name, values in allowed.items():
            if v[name] not in values:
                raise ConfigError(f"{key}.{name}: {v[name]!r} is not one the sae section trains; allowed: {values}")
    lo, hi = st["t_range"]
    if lo > hi:
        raise ConfigError(f"config key steer.t_range: {st['t_range']} must be [low, high] with low <= high")
    if st["guidance"] != 1 and st["prompt"] == "empty":
        raise ConfigError(f"config key steer.guidance: {st['guidance']} guides towards the prompt, but steer.prompt "
                          "is empty (set prompt: caption, or guidance: 1)")
    if "add" in st["edits"] and not st["strengths"]:
        raise ConfigError("config key steer.strengths: the add edit needs at least one strength")
    if "clamp" in st["edits"] and not st["clamp_quantiles"]:
        raise ConfigError("config key steer.clamp_quantiles: the clamp edit needs at least one quantile")


def check_selection(cfg: dict, section: str) -> list[str]:
    """A stage's section (classify, sae) names in its models / layers / timesteps keys only what extraction
    produces; returns the extraction models."""
    models = cfg["extraction"]["models"] or list(cfg["models"])
    chosen = cfg[section]
    bad = [m for m in chosen["models"] if m not in models]
    if bad:
        raise ConfigError(f"config key {section}.models: {bad} are not extraction models; allowed: {models}")
    for key in ("layers", "timesteps"):
        known = sorted({v for m in models for v in cfg["models"][m][key]}, key=str)
        bad = [v for v in chosen[key] if v not in known]
        if bad:
            raise ConfigError(f"config key {section}.{key}: {bad} are not {key} of any extraction model; allowed: "
                              f"{known}")
    return models


def check_classify(cfg: dict) -> None:
    """classify and pca name layers, timesteps and models that extraction produces; cached mode needs saved maps."""
    ex = cfg["extraction"]
    models = check_selection(cfg, "classify")
    cl = cfg["classify"]
    names = [b["name"] for b in cl["baselines"]]
    bad = sorted({n for n in names if names.count(n) > 1 or n in cfg["models"]})
    if bad:
        raise ConfigError(f"config key classify.baselines: names {bad} are used twice or by a model; a baseline's "
                          f"name is its model column in the accuracy tables, so it must be unique")
    if cl["mode"] == "cached" and not ex["save_maps"]:
        raise ConfigError("config key classify.mode: cached needs the maps saved (extraction.save_maps: true); "
                          "allowed without them: auto, on_the_fly")
    if cl.get("lr_t_max") is not None and cl.get("lr_schedule", "constant") != "cosine":
        raise ConfigError(f"config key classify.lr_t_max: {cl['lr_t_max']} is the cosine schedule's T_max, but "
                          f"classify.lr_schedule is {cl.get('lr_schedule')!r}; set lr_schedule: cosine or leave "
                          "lr_t_max null")
    for i, view in enumerate(cfg["pca"]["views"]):
        key = f"config key pca.views[{i}]"
        if view["model"] not in models:
            raise ConfigError(f"{key}.model: {view['model']!r} is not an extraction model; allowed: {models}")
        m = cfg["models"][view["model"]]
        if view["layer"] not in m["layers"]:
            raise ConfigError(f"{key}.layer: {view['layer']!r} is not a configured layer of {view['model']}; "
                              f"allowed: {m['layers']}")
        if view["timestep"] not in m["timesteps"]:
            raise ConfigError(f"{key}.timestep: {view['timestep']} is not a configured timestep of "
                              f"{view['model']}; allowed: {m['timesteps']}")


def classified_pairs(cfg: dict) -> list[tuple[str, str]]:
    """(model, data set) of every accuracy table: the features of every extraction data set that the classified
    models (classify.models, else every extraction model) give to the linear probes, and to Diff-C."""
    models = cfg["classify"]["models"] or cfg["extraction"]["models"] or list(cfg["models"])
    return [(m, ds) for m in models for ds in cfg["extraction"]["datasets"]]


def clip_baseline(cfg: dict) -> str | None:
    """The source of the first external baseline whose name or source says CLIP (classify.baselines), else None."""
    return next((b["source"] for b in cfg["classify"]["baselines"]
                 if "clip" in b["name"].lower() or "clip" in b["source"].lower()), None)


def check_prompt(cfg: dict) -> None:
    """No class-name prompt for classified features (label leakage) unless classify.allow_label_prompt; the prompt
    clip has a CLIP model (extraction.prompt_clip.source, filled in from classify.baselines where unset) and
    templates with {label}."""
    ex = cfg["extraction"]
    pairs = classified_pairs(cfg)
    if uses_label(ex["prompt"]) and pairs and not cfg["classify"]["allow_label_prompt"]:
        datasets, models = list(dict.fromkeys(d for _, d in pairs)), list(dict.fromkeys(m for m, _ in pairs))
        raise ConfigError(f"config key extraction.prompt: {ex['prompt']!r} writes each image's true class name "
                          f"({LABEL}) into its prompt, so the features of data sets {datasets} that the linear "
                          f"probes (and Diff-C) of models {models} are scored on carry the label (label leakage); use "
                          f"an empty prompt, a prompt without {LABEL}, or prompt: {CLIP_PROMPT} (a CLIP model picks "
                          f"each image's class name: extraction.prompt_clip), or set classify.allow_label_prompt: "
                          f"true to classify them anyway")
    if ex["prompt"] != CLIP_PROMPT:
        return
    clip = ex["prompt_clip"]
    if not clip["source"]:
        clip["source"] = clip_baseline(cfg)
        if not clip["source"]:
            raise ConfigError(f"config key extraction.prompt_clip.source: extraction.prompt {CLIP_PROMPT} needs a "
                              f"CLIP model (a hub id or a local folder), and no entry of classify.baselines names one "
                              f"(e.g. openai/clip-vit-base-patch32, the authors' ViT-B/32)")
    if not (Path(clip["source"]).is_dir() or is_hub_id(clip["source"])):
        raise ConfigError(f"config key extraction.prompt_clip.source: {clip['source']!r} is neither a local folder "
                          f"nor a hub id (org/name)")
    for name in clip["dataset_templates"]:
        if name not in ex["datasets"]:
            raise ConfigError(f"config key extraction.prompt_clip.dataset_templates: {name!r} is not an extraction "
                              f"data set; allowed: {ex['datasets']}")
    templates = {"template": clip["template"], **{f"dataset_templates.{d}": t
                                                  for d, t in clip["dataset_templates"].items()}}
    for key, template in templates.items():
        if not uses_label(template):
            raise ConfigError(f"config key extraction.prompt_clip.{key}: {template!r} has no {LABEL}, where each "
                              f"class name goes; without it every class gives the same prompt")


def clip_template(cfg: dict, dataset: str) -> str:
    """The template whose filled-in class names CLIP chooses from for a data set (extraction.prompt_clip)."""
    clip = cfg["extraction"]["prompt_clip"]
    return clip["dataset_templates"].get(dataset, clip["template"])


def validate_config(cfg: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Schema validation with defaults, then the semantic checks. Returns the (filled-in) config."""
    validate_schema(cfg, schema_path)
    check_config(cfg)
    return cfg


def load_config(path: str | Path) -> dict:
    """Read and validate a config file (for notebooks and tests)."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(cfg)
