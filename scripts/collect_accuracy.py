"""Rule collect_accuracy: the probes, every Diff-C result and the external baselines' probes of one (model, data
set) as one accuracy table."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.classify.tables import accuracy_table  # noqa: E402

if not snakemake.input.baselines:
    log.info("no external baselines configured (classify.baselines): no CLIP / DINOv2 rows in this table")
table = accuracy_table(snakemake.input.probes, list(snakemake.input.diffc), list(snakemake.input.baselines))
table.to_csv(snakemake.output[0], index=False, lineterminator="\n")
log.info("%d rows:\n%s", len(table), table.to_string(index=False))
