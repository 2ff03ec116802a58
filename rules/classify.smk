# Classifiers (Revelio's quantitative half) on the extracted features of every extraction model and data set:
# linear probes on the pooled vectors (one job per model and data set: every layer x timestep x target), Diff-C on
# the spatial maps (one job per model, data set, target and classify.group: the classifiers of every layer of a
# timestep, or of every layer x timestep, trained side by side from one denoiser pass per batch), an accuracy table
# per model and data set (with the external baselines' probes, when configured), and PCA views.
# Library: scripts/difflens/classify/.


localrules:
    collect_accuracy,


rule probe_features:
    input:
        index=f"{R}/activations/{{model}}/{{dataset}}/index.json",
    output:
        f"{R}/classify/{{model}}/{{dataset}}/probes.csv",
    params:
        targets=CL["probe_targets"],
        seed=config["seed"],
    threads: 1  # many small LBFGS fits: bound by Python, not by cores
    resources:
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=lambda w, input, attempt: resources_lib.pooled_table_mb(input.index, attempt),
    log:
        f"{R}/logs/probe_features/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/probe_features/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/probe_features.py"


# Diff-C: one rule per classified model, each job training the classifiers of its grouping (classify.group: every
# layer of a timestep, every layer x timestep, or one) from the same maps of each batch; one result JSON per
# (target, timestep, layer) whatever the grouping.
#: the classify keys train_diffc.py reads (a job's params: changing probe_targets, or adding a target, retrains none)
DIFFC_SETTINGS = pick(CL, ["mode", "cache_limit_gb", "augment", "augment_on", "noise", "epochs", "lr", "lr_schedule",
                           "lr_t_max", "batch_size", "width", "dropout", "conv_dropout", "refit"])
#: on the fly, training images augmented before the VAE: the job reads the data set's images and loads the VAE
DIFFC_PIXELS = CL["augment_on"] == "pixels" and bool(CL["augment"])

for _name in diffc_models():
    _part, _keys = diffc_job(_name)

    rule:
        name:
            f"train_diffc_{_name}"
        input:
            index=f"{R}/activations/{_name}/{{dataset}}/index.json",
            model=model_marker(_name),
            empty_prompt=[] if EX["prompt"] else f"{R}/models/{_name}/empty_prompt.safetensors",
            data=lambda w: dataset_json(w.dataset) if DIFFC_PIXELS else [],
        output:
            [f"{R}/classify/{_name}/{{dataset}}/diffc/{{target}}/{p}.json" for p in
             ([f"t{t}/{l}" for t, l in classify_grid(_name)] if _part == "all" else
              [f"t{{timestep}}/{l}" for l in dict.fromkeys(l for _, l in classify_grid(_name))]
              if _part == "t{timestep}" else [_part])],
        wildcard_constraints:
            timestep=r"\d+",
            layer=r"[A-Za-z0-9_.\-]+",
            target=r"[A-Za-z0-9_\-]+",
        params:
            model=_name,
            pairs=_keys,
            kind=config["models"][_name]["kind"],
            source=model_dir(_name),
            dtype=config["models"][_name]["dtype"],
            options=load_options(_name, activation_components(_name) + (["vae"] if DIFFC_PIXELS else [])),
            classify=DIFFC_SETTINGS,
            seed=config["seed"],
            noise_draws=EX["noise_draws"],
            prompt=lambda w: EX["prompt"],
            work=f"{R}/classify/{_name}/{{dataset}}/diffc/{{target}}/{_part}.work",
        threads: 1  # small nets: on a CPU-only machine two jobs side by side beat one job on two threads
        resources:
            **gpu_job(),
            runtime=lambda w, attempt: 240 * attempt,
            mem_mb=diffc_mem(_name),
        log:
            f"{R}/logs/train_diffc/{_name}/{{dataset}}/{{target}}/{_part}.log",
        benchmark:
            f"{R}/benchmarks/train_diffc/{_name}/{{dataset}}/{{target}}/{_part}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/train_diffc.py"


rule baseline_probes:
    input:
        data=lambda w: dataset_json(w.dataset),
        model=lambda w: baseline_marker(w.baseline),
    output:
        f"{R}/classify/baselines/{{baseline}}/{{dataset}}/probes.csv",
    wildcard_constraints:
        baseline="|".join(b["name"] for b in CL["baselines"]) or "no-baseline",
    params:
        source=lambda w: baseline_source(w.baseline),
        targets=CL["probe_targets"],
        seed=config["seed"],
    threads: 2
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=baseline_mem,
    log:
        f"{R}/logs/baseline_probes/{{baseline}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/baseline_probes/{{baseline}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/baseline_probes.py"


rule collect_accuracy:
    input:
        probes=f"{R}/classify/{{model}}/{{dataset}}/probes.csv",
        diffc=lambda w: diffc_results(w.model, w.dataset),
        baselines=lambda w: [f"{R}/classify/baselines/{b['name']}/{w.dataset}/probes.csv" for b in CL["baselines"]],
    output:
        f"{R}/classify/{{model}}/{{dataset}}/accuracy.csv",
    log:
        f"{R}/logs/collect_accuracy/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_accuracy/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_accuracy.py"


rule pca_views:
    input:
        index=f"{R}/activations/{{model}}/{{dataset}}/index.json",
        data=lambda w: dataset_json(w.dataset),
        model=get_model_marker,
        empty_prompt=empty_prompt_input,
    output:
        f"{R}/classify/{{model}}/{{dataset}}/pca/t{{timestep}}/{{layer}}.png",
    wildcard_constraints:
        timestep=r"\d+",
        layer=r"[A-Za-z0-9_.\-]+",
    params:
        kind=lambda w: config["models"][w.model]["kind"],
        source=lambda w: model_dir(w.model),
        dtype=lambda w: config["models"][w.model]["dtype"],
        options=lambda w: load_options(w.model, activation_components(w.model)),
        seed=config["seed"],
        noise_draws=EX["noise_draws"],
        prompt=lambda w: EX["prompt"],
        n_images=config["pca"]["n_images"],
    threads: 2
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 30 * attempt,
        mem_mb=denoiser_job_mem(lambda w: config["pca"]["n_images"]),
    log:
        f"{R}/logs/pca_views/{{model}}/{{dataset}}/t{{timestep}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/pca_views/{{model}}/{{dataset}}/t{{timestep}}/{{layer}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/pca_views.py"
