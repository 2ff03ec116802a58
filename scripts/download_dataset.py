"""Rule download_dataset: fetch one raw source (shared by the data sets built from it) into results/raw/<raw>/."""
import json
import time
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.data import sources  # noqa: E402

marker = Path(snakemake.output[0])
options = dict(snakemake.params.options)
start = time.time()
sources.download(snakemake.wildcards.raw, marker.parent, **options)
marker.write_text(json.dumps({"raw": snakemake.wildcards.raw, "options": options,
                              "seconds": round(time.time() - start, 1)}, indent=1) + "\n")
log.info("downloaded %s in %.0f s", snakemake.wildcards.raw, time.time() - start)
