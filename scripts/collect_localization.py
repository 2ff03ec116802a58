"""Rule collect_localization: the shards of one (model, data set) -> localization_maps.npz (every row's maps on the
latent grid), localization_items.csv (per row: IoU of every method at its chosen threshold) and localization.csv
(mIoU per method and word type at the held-out threshold and at the oracle one), from the rows' IoU curves alone."""
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.localize import evaluate_curves  # noqa: E402
from difflens.info.localize_shards import curves_of, join_shards, localize_rows, write_maps  # noqa: E402
from difflens.info.memory import read_plan  # noqa: E402

p, out = snakemake.params, snakemake.output
loc = p.localize
ds = Dataset.load(Path(snakemake.input.data).parent)
skipped = read_plan(snakemake.input.plan)["skipped"]
rows = localize_rows(ds, loc, skipped, class_labels=p.class_labels)
for sid, why in skipped.items():
    log.warning("sample %r is not in these tables (unreadable when the plan was made): %s", sid, why)
joined = join_shards(snakemake.input.shards, rows)
write_maps(out.maps, rows, joined)
totals = {"mi_nats": joined["mi_nats"], "cmi_nats": joined["cmi_nats"]}
if "thresholds" not in joined:
    log.warning("%s has no objects.csv (no masks): maps only, no mIoU", ds.name)
    rows.assign(**totals).to_csv(out.per_item, index=False)
    Path(out.table).write_text("word_type,n,threshold_source\n")
else:
    per_row, summary = evaluate_curves(rows, curves_of(joined), joined["whole"],
                                       calibration_split=loc["calibration_split"], seed=p.seed,
                                       thresholds=joined["thresholds"])
    per_row.assign(**totals).to_csv(out.per_item, index=False)
    summary = summary.assign(draws=p.draws, ddim_steps=loc["ddim_steps"])  # what the paper's columns are per
    summary.to_csv(out.table, index=False, lineterminator="\n")
    log.info("%d rows from %d shards; mIoU (held-out threshold; ':oracle' = best threshold on the evaluation "
             "rows):\n%s", len(rows), len(snakemake.input.shards), summary.to_string(index=False))
