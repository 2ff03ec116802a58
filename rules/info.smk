# Information decomposition (Kong et al., ICLR 2024): ARO caption choice in resumable shards, word localization
# (MI / CMI / attention maps and per-row IoU curves in resumable shards of images, thresholds chosen when they are
# collected), word maps without masks (one resumable job) and prompt intervention, per (text model, data set) that
# the infodecomp section lists.
# Library: scripts/difflens/info/.
from difflens.info import memory as localize_memory

#: the infodecomp keys the estimators read (the log-SNR proposal, draws, batch), and each stage's keys its scripts
#: read: a job's params hold only these, so that changing another stage's settings (or adding a data set, or a
#: collect-only key such as aro.min_group) reruns none of its denoiser jobs
INFO_ESTIMATOR = pick(INFO, ["loc", "scale", "clip", "stratified", "n_draws", "batch_size"])
ARO_SHARD = pick(INFO["aro"], ["split", "max_items", "n_shards", "n_draws"])
#: the draws per ARO image (infodecomp.aro.n_draws, else the estimators' count)
ARO_DRAWS = INFO["aro"]["n_draws"] or INFO["n_draws"]
LOCALIZE_ROWS = ["split", "calibration_split", "max_images"]  # the keys localize_rows reads
INTERVENE_JOB = pick(INFO["intervene"], ["split", "max_images", "words_per_image", "steps", "solver", "swaps",
                                         "n_boot", "omit"])


localrules:
    collect_aro,
    plan_localization,
    collect_localization,


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
        estimator=INFO_ESTIMATOR,
        aro=ARO_SHARD,
        seed=config["seed"],
    threads: 1  # small denoiser batches on a CPU: two jobs side by side beat one job on two threads
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=denoiser_job_mem(lambda w: INFO["batch_size"]),  # the model and one estimator batch
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
        ties=INFO["aro"]["ties"],
        draws=ARO_DRAWS,  # written beside the accuracies: the paper's Table 1 is at 100 draws
        title=lambda w: f"{w.model} on {w.dataset}: per-item caption margins",
    log:
        f"{R}/logs/collect_aro/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_aro/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_aro.py"


rule plan_localization:
    input:
        data=lambda w: dataset_json(w.dataset),
    output:
        f"{R}/info/{{model}}/{{dataset}}/localize/plan.json",
    params:
        localize=pick(INFO["localize"], LOCALIZE_ROWS + ["n_shards"]),
        class_labels=class_labels,
    resources:
        mem_mb=lambda w, attempt: resources_lib.request_mb(0, attempt),  # the data set's tables: a few MB
    log:
        f"{R}/logs/plan_localization/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/plan_localization/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/plan_localization.py"


rule localize_words:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
        plan=f"{R}/info/{{model}}/{{dataset}}/localize/plan.json",
    output:
        f"{R}/info/{{model}}/{{dataset}}/localize/shard-{{shard}}.npz",
    wildcard_constraints:
        shard=r"\d+",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        estimator=INFO_ESTIMATOR,
        localize=pick(INFO["localize"], LOCALIZE_ROWS + ["n_thresholds", "ddim_steps"]),  # n_shards: in the plan
        class_labels=class_labels,
        counts=DRAW_COUNTS,  # the smaller draw counts of a list are kept too, from the same draws
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        # the model's weights, the shard's rows, one caption's estimator tensors and the IoU step's chunk
        # (difflens.info.memory); a denoiser batch's activations where the GPU rules run on the CPU
        mem_mb=lambda w, input, attempt: maps_job_mb(w.model, localize_memory.shard_held_mb(
            input.plan, w.shard, model_sizes(w.model)[2], INFO["n_draws"], INFO["localize"]["n_thresholds"],
            len(DRAW_COUNTS) - 1), attempt),
    log:
        f"{R}/logs/localize_words/{{model}}/{{dataset}}/shard-{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/localize_words/{{model}}/{{dataset}}/shard-{{shard}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/localize_words.py"


rule collect_localization:
    input:
        data=lambda w: dataset_json(w.dataset),
        plan=f"{R}/info/{{model}}/{{dataset}}/localize/plan.json",
        shards=lambda w: [f"{R}/info/{w.model}/{w.dataset}/localize/shard-{k}.npz"
                          for k in range(INFO["localize"]["n_shards"])],
    output:
        table=f"{R}/info/{{model}}/{{dataset}}/localization.csv",
        per_item=f"{R}/info/{{model}}/{{dataset}}/localization_items.csv",
        maps=f"{R}/info/{{model}}/{{dataset}}/localization_maps.npz",
    params:
        localize=pick(INFO["localize"], LOCALIZE_ROWS + ["ddim_steps"]),
        class_labels=class_labels,
        draws=INFO["n_draws"],  # written beside the mIoU: the paper's numbers are per step count
        seed=config["seed"],
    resources:
        mem_mb=lambda w, input, attempt: resources_lib.request_mb(  # every row's maps and IoU curves
            localize_memory.collect_held_mb(input.plan, model_sizes(w.model)[2], INFO["localize"]["n_thresholds"],
                                            len(DRAW_COUNTS) - 1), attempt),
    log:
        f"{R}/logs/collect_localization/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/collect_localization/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/collect_localization.py"


rule word_maps:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
    output:
        maps=f"{R}/info/{{model}}/{{dataset}}/word_maps.npz",
        table=f"{R}/info/{{model}}/{{dataset}}/word_maps.csv",
        plot=report(f"{R}/info/{{model}}/{{dataset}}/word_maps.png", caption="../report/word_maps.rst",
                    category="Information decomposition (Kong et al.)", subcategory="word maps"),
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        estimator=INFO_ESTIMATOR,
        maps=pick(INFO["maps"], ["split", "max_images"]),
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        # the model's weights, every row's maps and one caption's estimator tensors (difflens.info.memory); a
        # denoiser batch's activations where the GPU rules run on the CPU
        mem_mb=lambda w, input, attempt: maps_job_mb(w.model, localize_memory.maps_held_mb(
            Path(input.data).with_name("words.csv"), INFO["maps"]["max_images"], model_sizes(w.model)[2],
            INFO["n_draws"]), attempt),
    log:
        f"{R}/logs/word_maps/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/word_maps/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/word_maps.py"


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
        estimator=INFO_ESTIMATOR,
        intervene=INTERVENE_JOB,
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=denoiser_job_mem(lambda w: INFO["batch_size"]),  # the model, one batch of an image's edits
    log:
        f"{R}/logs/intervene_words/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/intervene_words/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/intervene_words.py"


rule mmse_curves:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
    output:
        f"{R}/info/{{model}}/{{dataset}}/mmse_curves.csv",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        estimator=pick(INFO, ["batch_size"]),  # its own draws and levels: the log-SNR proposal plays no part
        mmse=pick(INFO["mmse"], ["split", "max_images", "n_levels", "n_draws", "reference_images"]),
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 120 * attempt,
        # the model and one level's draws of one image (the reference's variances are summed batch by batch)
        mem_mb=denoiser_job_mem(lambda w: min(INFO["mmse"]["n_draws"], INFO["batch_size"])),
    log:
        f"{R}/logs/mmse_curves/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/mmse_curves/{{model}}/{{dataset}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/mmse_curves.py"
