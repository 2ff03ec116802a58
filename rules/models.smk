# The shapes model: trained on demand (models.<name>.retrain), else loaded from its shipped checkpoint; every
# shapes model is reloaded through the model layer and checked (held-out loss, caption choice, samples).


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
        gpu=1,
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
        infodecomp=config["infodecomp"],
        seed=config["seed"],
    threads: 2
    resources:
        gpu=1,
        runtime=lambda w, attempt: 60 * attempt,
        mem_mb=lambda w, attempt: 4000 * attempt,
    log:
        f"{R}/logs/check_model/{{model}}.log",
    benchmark:
        f"{R}/benchmarks/check_model/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/check_model.py"
