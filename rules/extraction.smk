# Extraction: each data set's images are encoded once per model (latents: the VAE alone), then one job per (model,
# data set, shard) runs the denoiser once per batch over every configured timestep, with hooks on every configured
# layer, and writes one HDF5 file per (timestep, layer). Layout and reader: scripts/difflens/extract/.
#
# Shard counts: the checkpoint plan_shards reads the built data set's sample count and writes
# latents/{model}/{dataset}/shards.json (n_shards = ceil(n_samples / extraction.shard_size); shard k = rows
# k * shard_size .. (k + 1) * shard_size - 1 of samples.csv, all splits). Snakemake re-evaluates the DAG after it,
# so a dry run before the data set exists stops at plan_shards. Every shard is its own output: an interrupted run
# resumes at the missing shards.
from pathlib import Path

from difflens.extract.layout import activation_path, activation_shard_paths, latent_shard_paths, write_shard_plan



localrules:
    plan_shards,
    collect_skipped,
    index_activations,


checkpoint plan_shards:
    input:
        lambda w: dataset_json(w.dataset),
    output:
        f"{R}/latents/{{model}}/{{dataset}}/shards.json",
    params:
        shard_size=EX["shard_size"],
    log:
        f"{R}/logs/plan_shards/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/plan_shards/{{model}}/{{dataset}}.tsv"
    run:
        plan = write_shard_plan(input[0], output[0], params.shard_size)
        Path(log[0]).write_text(f"{plan.to_json()}\n")


rule encode_latents:
    input:
        data=lambda w: dataset_json(w.dataset),
        plan=f"{R}/latents/{{model}}/{{dataset}}/shards.json",
        model=get_model_marker,
    output:
        f"{R}/latents/{{model}}/{{dataset}}/shard-{{shard}}.h5",
    wildcard_constraints:
        shard=r"\d+",
    params:
        kind=lambda w: config["models"][w.model]["kind"],
        source=lambda w: model_dir(w.model),
        dtype=lambda w: config["models"][w.model]["dtype"],
        options=lambda w: load_options(w.model, ["vae"]),
        shard_size=EX["shard_size"],
        batch_size=EX["batch_size"],
    threads: 4
    priority: 10  # the long chain first (every feature stage waits for it); the information stages fill the gaps
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 120 * attempt,
        mem_mb=denoiser_job_mem(lambda w: EX["batch_size"]),  # the VAE alone: the whole model's weights bound it
    log:
        f"{R}/logs/encode_latents/{{model}}/{{dataset}}/shard-{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/encode_latents/{{model}}/{{dataset}}/shard-{{shard}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/encode_latents.py"


# One activation rule per model: its outputs are that model's configured timesteps x layers, one file each.
for _name in EXTRACT_MODELS:
    _m = config["models"][_name]

    rule:
        name:
            f"extract_activations_{_name}"
        input:
            latents=f"{R}/latents/{_name}/{{dataset}}/shard-{{shard}}.h5",
            model=model_marker(_name),
            empty_prompt=[] if EX["prompt"] else f"{R}/models/{_name}/empty_prompt.safetensors",
            prompts=clip_prompts_input,
        output:
            [str(activation_path(R, _name, "{dataset}", t, layer, "{shard}")) for t in _m["timesteps"]
             for layer in _m["layers"]],
        wildcard_constraints:
            shard=r"\d+",
        params:
            model=_name,
            kind=_m["kind"],
            source=model_dir(_name),
            dtype=_m["dtype"],
            options=load_options(_name, activation_components(_name)),
            outputs=[(t, layer) for t in _m["timesteps"] for layer in _m["layers"]],
            seed=config["seed"],
            noise_draws=EX["noise_draws"],
            prompt=lambda w: EX["prompt"],  # a function: Snakemake would read "{label}" in a string as a wildcard
            prompt_clip=clip_prompt_settings,
            batch_size=EX["batch_size"],
            save_maps=EX["save_maps"],
            compression=EX["map_compression"],
        threads: 2
        priority: 10
        resources:
            **gpu_job(),
            runtime=lambda w, attempt: 240 * attempt,
            mem_mb=extraction_mem(_name),
        log:
            f"{R}/logs/extract_activations/{_name}/{{dataset}}/shard-{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/extract_activations/{_name}/{{dataset}}/shard-{{shard}}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/extract_activations.py"


# extraction.prompt clip: the prompt of each image of a data set, the class name a CLIP model finds closest to it
# (zero-shot; the true label is never read), chosen once per data set for every model's activation jobs (the rule
# exists with that prompt only).
if CLIP_PROMPTS:

    rule choose_clip_prompts:
        input:
            data=lambda w: dataset_json(w.dataset),
            model=lambda w: fetched_marker(PROMPT_CLIP),
        output:
            clip_prompts_path("{dataset}"),
        params:
            source=lambda w: fetched_folder(PROMPT_CLIP),
            template=lambda w: clip_template(config, w.dataset),  # a function: "{label}" is no wildcard
            batch_size=EX["batch_size"],
        threads: 2
        resources:
            **gpu_job(),
            runtime=lambda w, attempt: 60 * attempt,
            mem_mb=clip_prompts_mem,
        log:
            f"{R}/logs/choose_clip_prompts/{{dataset}}.log",
        benchmark:
            f"{R}/benchmarks/choose_clip_prompts/{{dataset}}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/choose_clip_prompts.py"


rule collect_skipped:
    input:
        lambda w: latent_shard_paths(R, w.model, w.dataset, shard_plan(w)),
    output:
        f"{R}/latents/{{model}}/{{dataset}}/skipped.csv",
    log:
        f"{R}/logs/collect_skipped/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_skipped/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_skipped.py"


rule index_activations:
    input:
        shards=lambda w: activation_shard_paths(R, w.model, w.dataset, config["models"][w.model]["timesteps"],
                                                config["models"][w.model]["layers"], shard_plan(w)),
        skipped=f"{R}/latents/{{model}}/{{dataset}}/skipped.csv",
    output:
        f"{R}/activations/{{model}}/{{dataset}}/index.json",
    log:
        f"{R}/logs/index_activations/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/index_activations/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/index_activations.py"
