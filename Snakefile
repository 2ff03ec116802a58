# difflens: look inside diffusion models (Revelio layer/timestep probes + information decomposition).
# The workflow is assembled from one rule file per stage; the config is validated in rules/common.smk.

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/extraction.smk"
include: "rules/classify.smk"
include: "rules/sae.smk"
include: "rules/info.smk"
include: "rules/steer.smk"
include: "rules/report.smk"


onstart:
    # where this run's results came from: code version and commit, library versions, the resolved config
    from difflens.provenance import write_run_record

    write_run_record(R, config)


rule all:
    input:
        all_targets(),
    default_target: True
