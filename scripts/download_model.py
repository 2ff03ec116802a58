"""Rule download_model (local): fetch the files of one hub model that the pipeline loads into the model cache."""
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.models.fetch import fetch_model  # noqa: E402

p = snakemake.params
marker = fetch_model(p.model, p.kind, p.source, Path(snakemake.output[0]).parent, mirror=p.mirror,
                     config_key=p.config_key, skip=tuple(p.skip))
log.info("fetched %s (%s) from %s: %d files, %.2f GB in %.0f s", p.source, p.kind, marker["from"],
         len(marker["files"]), marker["bytes"] / 1e9, marker["seconds"])
