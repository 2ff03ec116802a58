"""Rule probe_features: linear probes on the pooled vectors of every layer x timestep x target of one (model, data
set) -> probes.csv (accuracy-table rows)."""
import json
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.classify.tables import probe_rows  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
index = json.loads(Path(snakemake.input.index).read_text())
entries = [(e["timestep"], e["layer"]) for e in index["entries"]]
store = FeatureStore(Path(snakemake.input.index).parents[3])
if not p.targets:
    log.info("probing label and every attribute column of %s", w.dataset)
table = probe_rows(store, w.model, w.dataset, entries, list(p.targets), seed=p.seed)
table.to_csv(snakemake.output[0], index=False, lineterminator="\n")
log.info("%d probes; best test accuracy per target:\n%s", len(table),
         table.groupby("target")["test_accuracy"].max().round(3).to_string())
