# k-sparse autoencoders (Revelio's mechanistic half) on the extracted features: one training job and one analysis
# job per (model, data set, run, input, timestep, layer), and a summary table per (model, data set). Each analysis
# also reads the run's two controls (its untrained state, saved by train_sae in init/, and random directions).
# Library: scripts/difflens/sae/. Memory requests: sae.memory's formulas over the sizes a job reads (common.smk).


localrules:
    collect_sae,


rule train_sae:
    input:
        index=f"{R}/activations/{{model}}/{{dataset}}/index.json",
    output:
        model=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/sae.safetensors",
        config=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/sae_config.json",
        curve=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/curve.csv",
        init=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/init/sae.safetensors",
    wildcard_constraints:
        input="pooled|spatial",
        timestep=r"\d+",
        layer=r"[A-Za-z0-9_.\-]+",
        run=r"[A-Za-z0-9_\-]+",
    params:
        run=lambda w: sae_run(w.run),
        positions=lambda w: SAE["positions"] if w.input == "spatial" else None,  # pooled vectors have no positions
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 120 * attempt,
        mem_mb=sae_train_mem,
    log:
        f"{R}/logs/train_sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/train_sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train_sae.py"


rule analyse_sae:
    input:
        index=f"{R}/activations/{{model}}/{{dataset}}/index.json",
        sae=rules.train_sae.output.model,
        init=rules.train_sae.output.init,
        data=lambda w: dataset_json(w.dataset),
    output:
        latents=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/latents.csv",
        summary=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/summary.json",
        grid=f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}/top_images.png",
    wildcard_constraints:
        input="pooled|spatial",
        timestep=r"\d+",
        layer=r"[A-Za-z0-9_.\-]+",
        run=r"[A-Za-z0-9_\-]+",
    params:
        split=SAE["split"],
        top=SAE["top"],
        sigma=SAE["sigma"],
        grid_latents=SAE["grid_latents"],
        seed=config["seed"],
    threads: 1
    resources:
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=sae_analysis_mem,
    log:
        f"{R}/logs/analyse_sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/analyse_sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/analyse_sae.py"


rule collect_sae:
    input:
        lambda w: sae_summaries(w.model, w.dataset),
    output:
        f"{R}/sae/{{model}}/{{dataset}}/summary.csv",
    log:
        f"{R}/logs/collect_sae/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_sae/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_sae.py"
