# Steering k-SAE latents (from reading to causing): one job per steered SAE (steer.targets) splices the SAE into the
# denoiser at its layer, regenerates images (ODE-inverted test images, or seeded noise) under ablate / clamp / add
# edits of its most word-aligned latents, measures the change (and, on the shapes world, the attributes read back),
# and correlates the change with the CMI map of the latent's word and with its heat map; with steer.control, the same
# for the SAE's untrained state (train_sae's init/), its latents matched to the same attributes.
# Library: scripts/difflens/steer/.
#: the steer keys a job reads (every one: each changes what a steering job computes)
STEER_JOB = {k: v for k, v in STEER.items() if k != "targets"}
#: a steered SAE's folder, and the SAE's own
STEERED = f"{R}/steer/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}"
SAE_DIR = f"{R}/sae/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}"


rule steer_latents:
    input:
        model=get_model_marker,
        data=lambda w: dataset_json(w.dataset),
        index=f"{R}/activations/{{model}}/{{dataset}}/index.json",
        sae=f"{SAE_DIR}/sae.safetensors",
        latents=f"{SAE_DIR}/latents.csv",
        init=f"{SAE_DIR}/init/sae.safetensors",
    output:
        chosen=f"{STEERED}/chosen.csv",
        effects=f"{STEERED}/effects.csv",
        correlations=f"{STEERED}/correlations.csv",
        per_image=f"{STEERED}/items.csv",
        images=f"{STEERED}/images.npz",
        grid=f"{STEERED}/grid.png",
        control_effects=f"{STEERED}/control_effects.csv",
        control_correlations=f"{STEERED}/control_correlations.csv",
    wildcard_constraints:
        input="pooled|spatial",
        timestep=r"\d+",
        layer=r"[A-Za-z0-9_.\-]+",
        run=r"[A-Za-z0-9_\-]+",
    params:
        kind=lambda w: info_model_params(w)["kind"],
        source=lambda w: info_model_params(w)["source"],
        dtype=lambda w: info_model_params(w)["dtype"],
        options=lambda w: info_model_params(w)["options"],
        steer=STEER_JOB,
        sae_split=SAE["split"],  # where the analysis read each latent's AUROC: the control's latents are read there
        estimator=INFO_ESTIMATOR,
        seed=config["seed"],
    threads: 1
    resources:
        **gpu_job(),
        runtime=lambda w, attempt: 240 * attempt,
        mem_mb=steer_mem,
    log:
        f"{R}/logs/steer_latents/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.log",
    benchmark:
        f"{R}/benchmarks/steer_latents/{{model}}/{{dataset}}/{{run}}/{{input}}/t{{timestep}}/{{layer}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/steer_latents.py"
