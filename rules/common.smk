# Validation first: a bad config stops here, before any job, with one message naming the key.
# At parse time the workflow imports only what a plain Snakemake environment has (envs/snakemake.yaml: Snakemake,
# pandas, PyYAML): the difflens modules below are pure Python. Everything heavier runs inside the jobs.
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from difflens import resources as resources_lib
from difflens.config import (ConfigError, LOCAL_SOURCES, check_config, check_renamed, classified_pairs, clip_template,
                             draw_counts, info_models)
from difflens.data.registry import raw_name
from difflens.extract.layout import extraction_index_paths
from difflens.extract.prompts import CLIP_PROMPT
from difflens.models.catalog import CLASS_KINDS
from difflens.models.fetch import MARKER as FETCH_MARKER, cache_folder_name, is_hub_id, unneeded_folders
from difflens.report.catalog import ITEMS as PAPER_ITEMS
from difflens.report.paper import identities as paper_identities
from difflens.sae import memory as sae_memory

try:
    check_renamed(config)
    validate(config, "../schemas/config.schema.yaml", set_default=True)
    check_config(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

R = config["results"]
MODEL_CACHE = config["model_cache"]
EX = config["extraction"]
CL = config["classify"]
SAE = config["sae"]
#: the infodecomp section with ``n_draws`` the largest draw count (what every estimator runs; the localization also
#: reports the smaller counts of a list, DRAW_COUNTS, from the first draws of the same run)
DRAW_COUNTS = draw_counts(config["infodecomp"])
INFO = {**config["infodecomp"], "n_draws": DRAW_COUNTS[-1]}
EXTRACT_MODELS = EX["models"] or list(config["models"])


wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    raw=r"[A-Za-z0-9_\-]+",
    model=r"[A-Za-z0-9_\-]+",


def pick(section, keys):
    """``{key: section[key]}`` for each of ``keys``, in that order: a rule's params hold only the settings its script
    reads, so that Snakemake's params rerun trigger (a job reruns when its params differ from the recorded ones)
    reruns exactly the jobs a changed key reaches."""
    return {k: section[k] for k in keys}


def dataset_json(name):
    return f"{R}/data/{name}/dataset.json"


def is_downloaded(name):
    """Data sets fetched from the network (the others are generated or read in place)."""
    return config["datasets"][name]["source"] not in LOCAL_SOURCES


def raw_name_of(name):
    """Raw download folder of a data set (data sets built from one download share it, e.g. coco2017)."""
    return raw_name(config["datasets"][name]["source"])


def get_raw_marker(wildcards):
    return [f"{R}/raw/{raw_name_of(wildcards.dataset)}/.done"] if is_downloaded(wildcards.dataset) else []


def download_options(raw):
    """Download options of the (first) configured data set that uses this raw download."""
    for name, ds in config["datasets"].items():
        if is_downloaded(name) and raw_name_of(name) == raw:
            return ds["download"]
    raise WorkflowError(f"no configured data set downloads into raw folder {raw!r}")


def is_hub_model(name):
    m = config["models"][name]
    return m["kind"] != "shapes" and is_hub_id(m["source"])


def model_dir(name):
    """Folder the model's jobs load from: the retrained copy, the fetched copy of a hub model, or its local source."""
    m = config["models"][name]
    if m["retrain"]:
        return f"{R}/models/{name}/trained"
    if is_hub_model(name):
        return f"{MODEL_CACHE}/{cache_folder_name(m['source'])}"
    return m["source"]


def model_marker(name):
    """The file every job of a model depends on: the retrained card, the fetched marker, or none (a local folder)."""
    m = config["models"][name]
    if m["retrain"]:
        return [f"{model_dir(name)}/difflens_model.json"]
    return [f"{model_dir(name)}/{FETCH_MARKER}"] if is_hub_model(name) else []


def fetched_folder(source):
    """Folder a transformers model (an external baseline, the prompt CLIP) loads from: the fetched copy of a hub id,
    or the local folder ``source``."""
    return f"{MODEL_CACHE}/{cache_folder_name(source)}" if is_hub_id(source) else source


def fetched_marker(source):
    """The fetched marker a job of such a model depends on (none for a local folder)."""
    return [f"{fetched_folder(source)}/{FETCH_MARKER}"] if is_hub_id(source) else []


def baseline_source(name):
    """Folder an external baseline loads from."""
    return fetched_folder(next(b["source"] for b in CL["baselines"] if b["name"] == name))


def baseline_marker(name):
    return fetched_marker(next(b["source"] for b in CL["baselines"] if b["name"] == name))


#: extraction.prompt clip: each image's prompt chosen by a CLIP model (extraction.prompt_clip; check_config filled in
#: its source)
CLIP_PROMPTS = EX["prompt"] == CLIP_PROMPT
PROMPT_CLIP = EX["prompt_clip"]["source"] if CLIP_PROMPTS else None


def clip_prompts_path(dataset):
    """The CLIP choices of a data set, one prompt per readable image (written by choose_clip_prompts)."""
    return f"{R}/prompts/{dataset}/clip_prompts.csv"


def clip_prompts_input(w):
    """The CLIP choices an activation job of data set ``w.dataset`` reads (none unless extraction.prompt is clip)."""
    return [clip_prompts_path(w.dataset)] if CLIP_PROMPTS else []


def clip_prompt_settings(w):
    """What an activation file records of the CLIP choice of its prompts ({} unless extraction.prompt is clip)."""
    return {"source": PROMPT_CLIP, "template": clip_template(config, w.dataset)} if CLIP_PROMPTS else {}


def get_model_marker(wildcards):
    return model_marker(wildcards.model)


def load_options(name, components):
    """load_model keyword arguments of a model's jobs: configured resolution, local files only, components, and the
    image geometry where it is not the default crop (so that a crop model's params, and the settings of its partial
    files, are what they were before the key existed)."""
    m = config["models"][name]
    opts = {"resolution": m["resolution"]} if m["resolution"] and m["kind"] != "shapes" else {}
    if m["kind"] != "shapes":
        opts["local_files_only"] = True
    if m["geometry"] != "crop":
        opts["geometry"] = m["geometry"]
    return {**opts, **m["options"], "components": list(components)}


def extraction_targets():
    """Extraction targets: one index per (model, data set), which needs every shard and the skipped table."""
    return extraction_index_paths(R, config)


def activation_components(name):
    """What an activation job loads: the denoiser, and the condition encoder only for a non-empty prompt."""
    return ["denoiser", "text"] if EX["prompt"] else ["denoiser"]


def empty_prompt_input(w):
    """The stored empty-prompt condition a job of the model needs when it runs the denoiser unconditionally."""
    return [] if EX["prompt"] else f"{R}/models/{w.model}/empty_prompt.safetensors"


def selected_grid(name, section):
    """(timestep, layer) pairs of a model that a stage's section (classify, sae) selects with its layers / timesteps
    keys ([] = all of the model's)."""
    m = config["models"][name]
    layers = [l for l in m["layers"] if not section["layers"] or l in section["layers"]]
    timesteps = [t for t in m["timesteps"] if not section["timesteps"] or t in section["timesteps"]]
    return [(t, l) for t in timesteps for l in layers]


def classify_grid(name):
    """(timestep, layer) pairs Diff-C trains on for a model."""
    return selected_grid(name, CL)


def diffc_group(name):
    """classify.group of model ``name``, auto resolved by the memory of its classifiers (the largest map a layer can
    give: 1280 channels on the latent grid)."""
    return resources_lib.diffc_group(CL, classify_grid(name), model_sizes(name)[2])


def diffc_job(name):
    """(path of one Diff-C job's part under diffc/{target}/, with the wildcards of its grouping: "all",
    "t{timestep}" or "t{timestep}/{layer}"; its (timestep, layer) pairs as a function of the wildcards)."""
    group, grid = diffc_group(name), classify_grid(name)
    if group == "all":
        return "all", lambda w: grid
    if group == "timestep":
        return "t{timestep}", lambda w: [(t, l) for t, l in grid if t == int(w.timestep)]
    return "t{timestep}/{layer}", lambda w: [(int(w.timestep), w.layer)]


def diffc_results(model, dataset):
    return [f"{R}/classify/{model}/{dataset}/diffc/{target}/t{t}/{layer}.json" for target in CL["targets"]
            for t, layer in classify_grid(model)]


def accuracy_tables():
    """One accuracy table per (classified model, data set): difflens.config.classified_pairs, which the check of
    class-name prompts (label leakage) reads too."""
    return [f"{R}/classify/{name}/{ds}/accuracy.csv" for name, ds in classified_pairs(config)]


def pca_pngs():
    """Every configured PCA view, for each extraction data set of its model."""
    return [f"{R}/classify/{name}/{ds}/pca/t{v['timestep']}/{v['layer']}.png" for name in CL["models"] or EXTRACT_MODELS
            for ds in EX["datasets"] for v in config["pca"]["views"] if v["model"] == name]


def classify_targets():
    """Every accuracy table and PCA view."""
    return accuracy_tables() + pca_pngs()


def sae_run(name):
    """A run's SAE settings (check_config filled in the defaults)."""
    return SAE["runs"][name]


def sae_summaries(model, dataset):
    return [f"{R}/sae/{model}/{dataset}/{run}/{inp}/t{t}/{layer}/summary.json" for run in SAE["runs"]
            for inp in SAE["inputs"] for t, layer in selected_grid(model, SAE)]


def sae_targets():
    """One summary table per (SAE model, data set)."""
    return [f"{R}/sae/{name}/{ds}/summary.csv" for name in SAE["models"] or EXTRACT_MODELS for ds in EX["datasets"]
            if SAE["runs"]]


def sae_job_sizes(w, index):
    """What an SAE job will read (sae.memory.job_sizes): its layer's extraction index entry and the data set's split
    sizes; None while they do not exist (a dry run: Snakemake computes the request again when the job is ready)."""
    if not (Path(index).is_file() and Path(dataset_json(w.dataset)).is_file()):
        return None
    entries = resources_lib.index_entries(index, w.layer, int(w.timestep))
    return sae_memory.job_sizes(entries[0], sae_memory.dataset_sizes(dataset_json(w.dataset)), w.input,
                                SAE["positions"]) if entries else None


def sae_train_mem(wildcards, input, attempt):
    """mem_mb of train_sae: sae.memory.train_job_bytes of the run on the sizes it reads."""
    sizes, run = sae_job_sizes(wildcards, input.index), sae_run(wildcards.run)
    held = sae_memory.train_job_bytes(sizes, run["expansion"], run["batch_size"]) if sizes else 0
    return resources_lib.request_mb(held / resources_lib.MB, attempt)


def sae_analysis_bytes(wildcards, index):
    """What analyse_sae holds for one SAE: sae.memory.analysis_job_bytes of the run on the split it reads
    (sae.split)."""
    sizes = sae_job_sizes(wildcards, index)
    return sae_memory.analysis_job_bytes(sizes, sae_run(wildcards.run)["expansion"], SAE["split"]) if sizes else 0


def sae_analysis_mem(wildcards, input, attempt):
    """mem_mb of analyse_sae (sae_analysis_bytes)."""
    return resources_lib.request_mb(sae_analysis_bytes(wildcards, input.index) / resources_lib.MB, attempt)


def info_model_params(w):
    """What an information job loads: the whole text model (VAE, denoiser, text encoder)."""
    m = config["models"][w.model]
    return {"kind": m["kind"], "source": model_dir(w.model), "dtype": m["dtype"],
            "options": load_options(w.model, ["vae", "denoiser", "text"])}


def skipped_folders(source):
    """The component folders no model entry of ``source`` loads (fetch.unneeded_folders; none for a baseline)."""
    entries = [m for m in config["models"].values() if m["source"] == source]
    skips = [set(unneeded_folders(m["kind"], m["options"])) for m in entries] or [set()]
    return sorted(set.intersection(*skips))


def class_labels(w):
    """Whether the information model localizes class labels (a class-conditional model) rather than words."""
    return config["models"][w.model]["kind"] in CLASS_KINDS


def info_paths(stage, *files):
    """results/info/<model>/<data set>/<file> for every text model and every data set ``infodecomp.<stage>``
    lists."""
    return [f"{R}/info/{name}/{ds}/{f}" for name in info_models(config, stage) for ds in INFO[stage]["datasets"]
            for f in files]


def info_targets():
    """The information stages' tables per (text model, data set) that each stage lists."""
    return info_paths("aro", "aro.csv") + info_paths("localize", "localization.csv") + info_paths(
        "intervene", "intervention.csv") + info_paths("maps", "word_maps.csv") + info_paths("mmse", "mmse_curves.csv")


def shard_plan(w):
    return checkpoints.plan_shards.get(model=w.model, dataset=w.dataset).output[0]


def shapes_models():
    return [n for n, m in config["models"].items() if m["kind"] == "shapes"]


def all_targets():
    """Every data set, every model's fetched weights (first, before any GPU job), checks and extraction indexes."""
    targets = [dataset_json(name) for name in config["datasets"]]
    targets += [marker for name in config["models"] if is_hub_model(name) for marker in model_marker(name)]
    targets += [marker for b in CL["baselines"] for marker in baseline_marker(b["name"])]
    targets += fetched_marker(PROMPT_CLIP) if CLIP_PROMPTS else []
    for name in shapes_models():
        targets += [f"{R}/models/{name}/check.json", f"{R}/models/{name}/samples.png"]
    targets += [clip_prompts_path(ds) for ds in EX["datasets"]] if CLIP_PROMPTS else []
    targets += extraction_targets()
    targets += classify_targets()
    targets += sae_targets()
    targets += info_targets()
    targets += steer_paths(*STEER_FILES)
    targets += report_targets()
    return targets


# ---- figures, summary page, feature browser (rules/report.smk) ----------------------------------------------------
def palette_spec():
    """Models, layers and timesteps in the config's order: every figure colours them the same way."""
    layers, timesteps = [], set()
    for m in config["models"].values():
        layers += [l for l in m["layers"] if l not in layers]
        timesteps |= set(m["timesteps"])
    return {"models": list(config["models"]), "layers": layers, "timesteps": sorted(timesteps)}


def paper_item(w):
    """The paper item a render_figure job draws (catalog.ITEMS, keyed "family/name")."""
    return PAPER_ITEMS[f"{w.family}/{w.item}"]


def sae_models():
    return [n for n in SAE["models"] or EXTRACT_MODELS if n in EXTRACT_MODELS] if SAE["runs"] else []


def diffc_models():
    return (CL["models"] or EXTRACT_MODELS) if CL["targets"] else []


def report_inputs(key):
    """Input kind -> paths of one paper item (catalog.ITEMS[key].needs); a clear error when the config cannot make
    it (for instance a DiT table without a DiT model)."""
    if key not in PAPER_ITEMS:
        raise WorkflowError(f"no paper item {key!r}; items: {sorted(PAPER_ITEMS)}")
    why = item_unavailable(key)
    if why:
        raise WorkflowError(f"figure {key} cannot be made with this config: {why} "
                            f"({PAPER_ITEMS[key].config} sets it up)")
    kinds = {
        "sae_summary": sae_targets,
        "sae_grids": lambda: [p.replace("summary.json", "top_images.png") for name in sae_models()
                              for ds in EX["datasets"] for p in sae_summaries(name, ds)],
        "accuracy": accuracy_tables,
        "datasets": lambda: [dataset_json(d) for d in dict.fromkeys(EX["datasets"] + INFO["localize"]["datasets"]
                                                                    + INFO["intervene"]["datasets"])],
        "pca": pca_pngs,
        "aro": lambda: info_paths("aro", "aro.csv"),
        "localization": lambda: info_paths("localize", "localization.csv", "localization_maps.npz"),
        "intervention": lambda: info_paths("intervene", "intervention.csv", "intervention_items.csv",
                                           "intervention_maps.npz"),
        "mmse": lambda: info_paths("mmse", "mmse_curves.csv"),
        "steering": lambda: steer_paths("chosen.csv", "effects.csv", "correlations.csv", "images.npz",
                                        "control_effects.csv", "control_correlations.csv"),
    }
    return {kind: kinds[kind]() for kind in PAPER_ITEMS[key].needs}


def item_unavailable(key):
    """Why this config cannot make a paper item (None when it can)."""
    it = PAPER_ITEMS[key]
    dit = [n for n in sae_models() if config["models"][n]["kind"] == "dit"]
    if "sae_summary" in it.needs and not sae_targets():
        return "no k-SAE runs (sae.runs, or extraction.datasets, is empty)"
    if it.name in ("table2d", "fig9") and not dit:
        return "no DiT model (kind: dit) among the SAE models (sae.models)"
    if it.name in ("fig4", "fig6", "fig8", "table3") and it.family == "revelio" and not diffc_models():
        return "Diff-C is off (classify.targets is empty)"
    if "accuracy" in it.needs and not accuracy_tables():
        return "no accuracy tables (no extraction data set)"
    if it.name == "fig10" and not pca_pngs():
        return "no PCA views (pca.views, or extraction.datasets, is empty)"
    for kind, section in (("aro", "aro"), ("localization", "localize"), ("intervention", "intervene"),
                          ("mmse", "mmse")):
        if kind in it.needs and not (INFO[section]["datasets"] and info_models(config, section)):
            return f"no information run (infodecomp.models and infodecomp.{section}.datasets)"
    if "steering" in it.needs and not steer_folders():
        return "no steered SAE (steer.targets is empty)"
    if it.family == "shapes" and not any(config["datasets"][d]["source"] == "shapes" for d in EX["datasets"]):
        return "no shapes-world data set among extraction.datasets"
    return None


def report_targets():
    """Every paper item this config can make, the summary page and the feature browser."""
    out = [PAPER_ITEMS[k].target(R) for k in PAPER_ITEMS if not item_unavailable(k)]
    out.append(f"{R}/summary.md")
    if browser_runs() or browser_info():
        out.append(f"{R}/browser")
    return out


# ---- steering (rules/steer.smk) -------------------------------------------------------------------------------------
STEER = config["steer"]
#: what each steered SAE's folder holds (rule steer_latents)
STEER_FILES = ("chosen.csv", "effects.csv", "correlations.csv", "items.csv", "images.npz", "grid.png",
               "control_effects.csv", "control_correlations.csv")


def steer_mem(wildcards, input, attempt):
    """mem_mb of steer_latents: the model and one denoiser batch, plus, where the job reads the SAE's vectors (clamp
    edits, the control's matched latents), what analyse_sae holds for the same SAE (every map position of a spatial
    one)."""
    reads = STEER["control"] or "clamp" in STEER["edits"]
    held = sae_analysis_bytes(wildcards, input.index) if reads else 0
    return resources_lib.model_job_mb(*model_sizes(wildcards.model), STEER["batch_size"], held / resources_lib.MB,
                                      attempt, GPU_RULES_ON_CPU)


def steer_folders():
    """The folder of every steered SAE (steer.targets): results/steer/<model>/<data set>/<run>/<input>/t<t>/<layer>."""
    return [f"{R}/steer/{v['model']}/{v['dataset']}/{v['run']}/{v['input']}/t{v['timestep']}/{v['layer']}"
            for v in STEER["targets"]]


def steer_paths(*files):
    """``files`` (of STEER_FILES) of every steered SAE."""
    return [f"{folder}/{f}" for folder in steer_folders() for f in files]


def browser_runs():
    """The SAEs the browser shows: (model, data set, run, input, timestep, layer) of every SAE."""
    return [{"model": m, "dataset": d, "run": run, "input": inp, "timestep": t, "layer": l}
            for m in sae_models() for d in EX["datasets"] for run in SAE["runs"] for inp in SAE["inputs"]
            for t, l in selected_grid(m, SAE)]


def browser_info():
    """(model, data set) pairs whose localization maps and ARO scores the browser's information view shows."""
    pairs = [(m, d) for m in info_models(config, "localize") for d in INFO["localize"]["datasets"]]
    pairs += [(m, d) for m in info_models(config, "aro") for d in INFO["aro"]["datasets"]]
    return [{"model": m, "dataset": d} for m, d in dict.fromkeys(pairs)]


def browser_inputs(wildcards):
    """Every SAE's weights and analysis, the activation indexes, the data sets, the information outputs, the steered
    SAEs' effects and images (their latents' steering strips)."""
    sae = [f"{R}/sae/{r['model']}/{r['dataset']}/{r['run']}/{r['input']}/t{r['timestep']}/{r['layer']}/{f}"
           for r in browser_runs() for f in ("sae.safetensors", "latents.csv", "summary.json")]
    index = [f"{R}/activations/{r['model']}/{r['dataset']}/index.json" for r in browser_runs()]
    info = info_paths("localize", "localization_maps.npz") + info_paths("aro", "aro_items.csv")
    data = [dataset_json(d) for d in dict.fromkeys([r["dataset"] for r in browser_runs()]
                                                  + [p["dataset"] for p in browser_info()])]
    return {"sae": sae, "index": list(dict.fromkeys(index)), "info": info, "data": data,
            "steer": steer_paths("effects.csv", "images.npz")}


def summary_inputs(wildcards):
    """The tables the summary page quotes (those this config makes)."""
    return {"sae": sae_targets(), "accuracy": accuracy_tables(), "aro": info_paths("aro", "aro.csv"),
            "localization": info_paths("localize", "localization.csv"),
            "intervention": info_paths("intervene", "intervention.csv"),
            "word_maps": info_paths("maps", "word_maps.csv"), "steer": steer_paths("effects.csv", "correlations.csv",
                                                                                 "control_effects.csv"),
            "check": [f"{R}/models/{n}/check.json" for n in shapes_models()],
            "skipped": [f"{R}/latents/{m}/{d}/skipped.csv" for m in EXTRACT_MODELS for d in EX["datasets"]]}


# ---- GPU requests and SLURM partitions (profiles/slurm, docs/cluster.md) --------------------------------------------
# A rule that needs a GPU gives **gpu_job() in its resources, and nothing else names GPU rules. What a GPU job asks
# of SLURM follows from these site settings, which a profile gives under default-resources (every job carries them;
# only the functions below read them):
#   gpu_jobs_partition  the partition of the jobs that ask for a GPU (unset: slurm_partition, every other job's)
#   gpu_jobs_model      the GPU type, asked as --gpus=<type>:1
#   gpu_jobs_gres       a gres string such as "gpu:a100:1", asked with --gres instead of --gpus
def _resource_value(resource, wildcards, **context):
    """The value of ``resource`` for one job: a Snakemake Resource evaluated with the job's ``wildcards`` and
    ``context`` (input, attempt, threads, rulename) where it is an expression or a function, else as given; a plain
    value (as a mapping given through Snakemake's Python API holds) as it is."""
    from snakemake.resources import Resource

    if not isinstance(resource, Resource):
        return resource
    return resource.evaluate(wildcards, async_run=workflow.async_run, **context).value


def site_setting(name):
    """The value the profile (or --default-resources) gives the default resource ``name``, evaluated as Snakemake
    evaluates it (a number, a quoted string, or a bare word taken as a string); None when none is given."""
    from snakemake.iocontainers import Wildcards

    given = workflow.resource_settings.default_resources
    if given is None or name not in given:
        return None
    return _resource_value(given[name], Wildcards(), input=[], attempt=1, threads=1, rulename="")


def asks_gpu(gpu, gres):
    """Whether a job with resources ``gpu`` and ``gres`` (None where unset) asks SLURM for a GPU, as the SLURM
    plugin reads them: a gpu count above 0, or a gres string naming gpu."""
    return int(gpu or 0) > 0 or "gpu" in str(gres or "")


def job_asks_gpu(wildcards, input, attempt, threads, rulename):
    """Whether a job asks for a GPU, from the gpu and gres resources of its rule (named ``rulename``) as
    set-resources leaves them (gpu=0 takes the GPU away), evaluated for the job."""
    resources = workflow.get_rule(rulename).resources
    context = {"input": input, "attempt": attempt, "threads": threads, "rulename": rulename}
    return asks_gpu(*(_resource_value(resources.get(name), wildcards, **context) for name in ("gpu", "gres")))


def gpu_job_partition(wildcards, input, attempt, threads, rulename):
    """slurm_partition of a job of a GPU rule: gpu_jobs_partition (or, unset, slurm_partition) while the job asks
    for a GPU (job_asks_gpu), else slurm_partition; None (the cluster's default partition) where neither is given."""
    cpu_partition = site_setting("slurm_partition")
    if job_asks_gpu(wildcards, input, attempt, threads, rulename):
        return site_setting("gpu_jobs_partition") or cpu_partition
    return cpu_partition


def gpu_job_model(wildcards, input, attempt, threads, rulename):
    """gpu_model of a job of a GPU rule: gpu_jobs_model while the job asks for a GPU, else None (the SLURM plugin
    would turn a gpu_model beside gpu=0 into --gpus=<model>:0)."""
    return site_setting("gpu_jobs_model") if job_asks_gpu(wildcards, input, attempt, threads, rulename) else None


def gpu_job():
    """The resources, given as ``**gpu_job()``, that make each job of a GPU rule ask for one GPU. These are
    gpu=1 (the SLURM plugin asks --gpus=1, or --gpus=<gpu_jobs_model>:1 with gpu_model from gpu_job_model), or,
    with gpu_jobs_gres, that gres and no gpu (a job with gpu=0 runs on the CPU: difflens.runlog.job_device); and
    slurm_partition from gpu_job_partition."""
    gres = site_setting("gpu_jobs_gres")
    request = {"gres": gres} if gres else {"gpu": 1, "gpu_model": gpu_job_model}
    return {**request, "slurm_partition": gpu_job_partition}


# ---- memory requests (difflens.resources: sizes read when the job is ready) -----------------------------------------
def _gpu_rules_on_cpu():
    """Whether the GPU rules run on the CPU, where a denoiser batch's activations take host memory: no GPU to share
    (`--resources gpu=0`, as make demo passes on a machine without one), or a local run on a machine without
    nvidia-smi. On a cluster the jobs get their GPU."""
    import shutil

    gpu = workflow.global_resources.get("gpu")
    if getattr(gpu, "value", gpu) == 0:
        return True
    return bool(getattr(workflow, "local_exec", True)) and shutil.which("nvidia-smi") is None


GPU_RULES_ON_CPU = _gpu_rules_on_cpu()


def model_sizes(name):
    """(folder, dtype, resolution) of a configured model, for the memory formulas: the resolution configured, or
    the one its folder was built for."""
    m = config["models"][name]
    folder = model_dir(name)
    return folder, m["dtype"], m["resolution"] or resources_lib.native_resolution(folder)


def extraction_mem(name):
    """mem_mb of an extraction job of model ``name``: the model, one denoiser batch (every timestep of it), and its
    outputs (a map of at most 1280 channels on the latent grid per layer and timestep)."""
    m = config["models"][name]

    def mem(wildcards, input, attempt):
        folder, dtype, res = model_sizes(name)
        batch = EX["batch_size"] * len(m["timesteps"]) * EX["noise_draws"]
        values = len(m["layers"]) * len(m["timesteps"]) * 1280 * (res // 8) ** 2
        return resources_lib.extraction_mb(folder, dtype, res, batch, values, attempt, GPU_RULES_ON_CPU)

    return mem


def denoiser_job_mem(batch_of):
    """mem_mb of a job that runs the model of ``wildcards.model`` on ``batch_of(wildcards)`` images."""

    def mem(wildcards, attempt):
        return resources_lib.model_job_mb(*model_sizes(wildcards.model), batch_of(wildcards), 0.0, attempt,
                                          GPU_RULES_ON_CPU)

    return mem


def maps_job_mb(model, held_mb, attempt):
    """mem_mb of a job that draws word maps with ``model`` (localize_words, word_maps): the model's weights, the
    ``held_mb`` its rows need (difflens.info.memory), and a denoiser batch's activations where the GPU rules run on
    the CPU."""
    folder, dtype, resolution = model_sizes(model)
    return resources_lib.request_mb(resources_lib.weights_mb(folder, dtype) + held_mb + GPU_RULES_ON_CPU
                                    * resources_lib.denoiser_working_mb(resolution, INFO["batch_size"], dtype), attempt)


def diffc_mem(name):
    """mem_mb of a Diff-C job of model ``name``: its classifiers (difflens.resources.diffc_head_mb), with the cached
    maps of every one in memory, or the denoiser on the fly (a batch of every timestep of the job), as the job
    chooses from the extraction index (classify.mode)."""
    keys_of = diffc_job(name)[1]

    def mem(wildcards, input, attempt):
        entries = [e for t, l in keys_of(wildcards) for e in resources_lib.index_entries(input.index, l, t)]
        heads = sum(resources_lib.diffc_head_mb(int(e["map_shape"][0]), resources_lib.map_values(e) //
                                                int(e["map_shape"][0]), CL["width"], CL["batch_size"])
                    for e in entries)
        held = [resources_lib.cached_maps_mb(e, CL["cache_limit_gb"]) for e in entries]
        if CL["mode"] == "cached" or (CL["mode"] == "auto" and entries and all(h > 0 for h in held)):
            return resources_lib.request_mb(heads + sum(held), attempt)
        batch = CL["batch_size"] * len({int(e["timestep"]) for e in entries} or {0})
        return resources_lib.model_job_mb(*model_sizes(name), batch, heads, attempt, GPU_RULES_ON_CPU)

    return mem


def image_model_mb(folder, batch):
    """An image model's weights (float32) and a batch of ``batch`` 224 px images through it."""
    return resources_lib.weights_mb(folder) + batch * 224 * 224 * 3 * 4 * 50 / 1e6


def baseline_mem(wildcards, input, attempt):
    """mem_mb of baseline_probes: the image model's weights (float32), a batch of 224 px images through it, and the
    pooled features of every image (at most 1,536 wide) with the probes' four float64 working copies."""
    images = sum(sae_memory.dataset_sizes(input.data)["splits"].values())
    model = image_model_mb(baseline_source(wildcards.baseline), 64)
    return resources_lib.request_mb(model + images * 1536 * 8 * 5 / 1e6, attempt)


def clip_prompts_mem(wildcards, attempt):
    """mem_mb of choose_clip_prompts: the CLIP model's weights and a batch (extraction.batch_size) of 224 px images
    through it."""
    return resources_lib.request_mb(image_model_mb(fetched_folder(PROMPT_CLIP), EX["batch_size"]), attempt)


def browser_mem(wildcards, input, attempt):
    """mem_mb of feature_browser: the largest SAE's analysis (sae.memory.analysis_job_bytes: its vectors, model and
    scores; the browser reads one SAE at a time) and the localization maps it shows (decompressed: 4 x the file)."""
    largest = 0
    for r in browser_runs():
        w = SimpleNamespace(**r)
        sizes = sae_job_sizes(w, f"{R}/activations/{r['model']}/{r['dataset']}/index.json")
        if sizes:
            largest = max(largest, sae_memory.analysis_job_bytes(sizes, sae_run(r["run"])["expansion"], SAE["split"]))
    maps = sum(4 * Path(f).stat().st_size for f in input.info if str(f).endswith(".npz") and Path(f).is_file())
    return resources_lib.request_mb((largest + maps) / resources_lib.MB, attempt)


#: minutes feature_browser asks per SAE it shows: it scores the SAE's split again (about 20 s on one core for the
#: 6,149 Flowers-102 test images through an 81,920-latent SAE), then writes its latent pages and thumbnails
BROWSER_MINUTES_PER_SAE = 1


def browser_runtime(wildcards, attempt):
    """runtime (minutes) of feature_browser: 30, plus BROWSER_MINUTES_PER_SAE per SAE it shows, times the attempt
    (configs/revelio.yaml's 480 SAEs: 510 on the first attempt)."""
    return (30 + BROWSER_MINUTES_PER_SAE * len(browser_runs())) * attempt
