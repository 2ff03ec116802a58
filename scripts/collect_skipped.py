"""Rule collect_skipped: the table of images the latents shards of one (model, data set) could not read."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.extract.store import write_skipped  # noqa: E402

table = write_skipped(list(snakemake.input), snakemake.output[0])
log.info("%d skipped sample(s)", len(table))
