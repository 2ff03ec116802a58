# Data sets: download (local rule, network) -> the common on-disk form under results/data/<name>/.


localrules:
    download_dataset,


rule download_dataset:
    output:
        f"{R}/raw/{{raw}}/.done",
    params:
        options=lambda w: download_options(w.raw),
    retries: 3
    log:
        f"{R}/logs/download_dataset/{{raw}}.log",
    benchmark:
        f"{R}/benchmarks/download_dataset/{{raw}}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/download_dataset.py"


rule prepare_dataset:
    input:
        get_raw_marker,
    output:
        f"{R}/data/{{dataset}}/dataset.json",
    params:
        source=lambda w: config["datasets"][w.dataset]["source"],
        params=lambda w: config["datasets"][w.dataset]["params"],
        raw=lambda w: f"{R}/raw/{raw_name_of(w.dataset)}" if is_downloaded(w.dataset) else None,
        seed=config["seed"],
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 60 * attempt,
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prepare_dataset.py"
