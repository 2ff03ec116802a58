"""Rule index_activations: a JSON summary of every complete activation file of one (model, data set)."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.extract.store import write_index  # noqa: E402

index = write_index(list(snakemake.input.shards), snakemake.output[0])
log.info("%d (timestep, layer) entries", len(index["entries"]))
