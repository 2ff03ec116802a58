# Information decomposition (Kong et al., ICLR 2024): ARO caption choice in resumable shards, word localization
# (MI / CMI / attention maps against masks) and prompt intervention, per (text model, data set) that the
# infodecomp section lists. Library: scripts/difflens/info/.


localrules:
    collect_aro,


rule score_aro:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
    output:
        f"{R}/info/{{model}}/{{dataset}}/aro/shard-{{shard}}.csv",
    wildcard_constraints:
        shard=r"\d+",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        infodecomp=INFO,
        seed=config["seed"],
    threads: 1  # small denoiser batches on a CPU: two jobs side by side beat one job on two threads
    resources:
        gpu=1,
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=lambda w, attempt: 8000 * attempt,
    log:
        f"{R}/logs/score_aro/{{model}}/{{dataset}}/shard-{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/score_aro/{{model}}/{{dataset}}/shard-{{shard}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/score_aro.py"


rule collect_aro:
    input:
        lambda w: [f"{R}/info/{w.model}/{w.dataset}/aro/shard-{k}.csv" for k in range(INFO["aro"]["n_shards"])],
    output:
        per_item=f"{R}/info/{{model}}/{{dataset}}/aro_items.csv",
        table=f"{R}/info/{{model}}/{{dataset}}/aro.csv",
        plot=f"{R}/info/{{model}}/{{dataset}}/aro_margins.png",
    params:
        min_group=INFO["aro"]["min_group"],
        title=lambda w: f"{w.model} on {w.dataset}: per-item caption margins",
    log:
        f"{R}/logs/collect_aro/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_aro/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_aro.py"


rule localize_words:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
    output:
        table=f"{R}/info/{{model}}/{{dataset}}/localization.csv",
        per_item=f"{R}/info/{{model}}/{{dataset}}/localization_items.csv",
        maps=f"{R}/info/{{model}}/{{dataset}}/localization_maps.npz",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        infodecomp=INFO,
        seed=config["seed"],
    threads: 1
    resources:
        gpu=1,
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=lambda w, attempt: 8000 * attempt,
    log:
        f"{R}/logs/localize_words/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/localize_words/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/localize_words.py"


rule intervene_words:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
    output:
        table=f"{R}/info/{{model}}/{{dataset}}/intervention.csv",
        per_item=f"{R}/info/{{model}}/{{dataset}}/intervention_items.csv",
        maps=f"{R}/info/{{model}}/{{dataset}}/intervention_maps.npz",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        infodecomp=INFO,
        seed=config["seed"],
    threads: 1
    resources:
        gpu=1,
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=lambda w, attempt: 8000 * attempt,
    log:
        f"{R}/logs/intervene_words/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/intervene_words/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/intervene_words.py"
