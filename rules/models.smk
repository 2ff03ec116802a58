# Models: hub weights fetched once (local rule, before any GPU job); the shapes model trained on demand
# (models.<name>.retrain), else loaded from its shipped checkpoint; every shapes model is reloaded through the model
# layer and checked (held-out loss, samples); the empty-prompt condition encoded once per model.
from difflens.models.fetch import cache_folder_name as _cache_name

# cache folder name -> (config name, kind, hub id, config key) of the hub models, the external baselines' hub
# image models and the prompt CLIP (extraction.prompt clip; two names may share one hub id)
HUB_MODELS = {_cache_name(m["source"]): (n, m["kind"], m["source"], f"models.{n}.source")
              for n, m in config["models"].items() if is_hub_model(n)}
HUB_MODELS.update({_cache_name(b["source"]): (b["name"], "image_encoder", b["source"], "classify.baselines")
                   for b in CL["baselines"] if is_hub_id(b["source"])})
if CLIP_PROMPTS and is_hub_id(PROMPT_CLIP):
    HUB_MODELS.setdefault(_cache_name(PROMPT_CLIP), ("prompt_clip", "image_encoder", PROMPT_CLIP,
                                                     "extraction.prompt_clip.source"))


localrules:
    download_model,


rule download_model:
    output:
        f"{MODEL_CACHE}/{{hubdir}}/{FETCH_MARKER}",
    wildcard_constraints:
        hubdir="|".join(HUB_MODELS) or "no-hub-model",
    params:
        model=lambda w: HUB_MODELS[w.hubdir][0],
        kind=lambda w: HUB_MODELS[w.hubdir][1],
        source=lambda w: HUB_MODELS[w.hubdir][2],
        config_key=lambda w: HUB_MODELS[w.hubdir][3],
        skip=lambda w: skipped_folders(HUB_MODELS[w.hubdir][2]),
        mirror=config["hub_mirror"],
    retries: 2
    log:
        f"{R}/logs/download_model/{{hubdir}}.log",
    benchmark:
        f"{R}/benchmarks/download_model/{{hubdir}}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/download_model.py"


rule train_shapes_model:
    input:
        lambda w: dataset_json(config["models"][w.model]["train"]["dataset"]),
    output:
        f"{R}/models/{{model}}/trained/difflens_model.json",
    params:
        train=lambda w: config["models"][w.model]["train"],
        seed=config["seed"],
        work=lambda w: f"{R}/models/{w.model}/train_work",
    threads: 4
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=lambda w, attempt: 8000 * attempt,
    log:
        f"{R}/logs/train_shapes_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/train_shapes_model/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train_shapes_model.py"


rule check_model:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(config["models"][w.model]["train"]["dataset"]),
    output:
        json=f"{R}/models/{{model}}/check.json",
        grid=f"{R}/models/{{model}}/samples.png",
    params:
        kind=lambda w: config["models"][w.model]["kind"],
        source=lambda w: model_dir(w.model),
        dtype=lambda w: config["models"][w.model]["dtype"],
        check=config["check"],
        seed=config["seed"],
    threads: 2
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=denoiser_job_mem(lambda w: config["check"]["n_images"]),
    log:
        f"{R}/logs/check_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/check_model/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/check_model.py"


# The empty prompt's condition, encoded once per model on the CPU, so that unconditional activation jobs need not
# load the text encoder at all.
rule encode_empty_prompt:
    input:
        get_model_marker,
    output:
        f"{R}/models/{{model}}/empty_prompt.safetensors",
    params:
        kind=lambda w: config["models"][w.model]["kind"],
        source=lambda w: model_dir(w.model),
        options=lambda w: load_options(w.model, ["text"]),
    threads: 1
    priority: 10
    resources:
        runtime=lambda w, attempt: 30 * attempt,
        mem_mb=denoiser_job_mem(lambda w: 1),  # the text encoder on one prompt: the weights bound it
    log:
        f"{R}/logs/encode_empty_prompt/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/encode_empty_prompt/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/encode_empty_prompt.py"
