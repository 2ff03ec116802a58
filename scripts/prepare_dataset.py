"""Rule prepare_dataset: build one configured data set in the common on-disk form."""
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.data.prepare import describe, prepare_dataset  # noqa: E402

out = prepare_dataset(snakemake.wildcards.dataset, snakemake.params.source, dict(snakemake.params.params),
                      out_dir=Path(snakemake.output[0]).parent, raw_dir=snakemake.params.raw,
                      seed=snakemake.params.seed)
log.info("wrote %s", describe(out))
