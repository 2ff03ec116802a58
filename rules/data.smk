# Data sets: download (local rule, network) -> the common on-disk form under results/data/<name>/.


localrules:
    download_dataset,


rule download_dataset:
    output:
        touch(f"{R}/raw/{{dataset}}/.done"),
    params:
        source=lambda w: config["datasets"][w.dataset]["source"],
        params=lambda w: config["datasets"][w.dataset]["params"],
    log:
        f"{R}/logs/download_dataset/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/download_dataset/{{dataset}}.tsv"
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
        raw=lambda w: f"{R}/raw/{w.dataset}",
        seed=config["seed"],
    log:
        f"{R}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/prepare_dataset.py"
