"""Rule collect_aro: the shards of one (model, data set) -> per-item outcomes (aro_items.csv), accuracy tables
(aro.csv: per kind and score, per group, macro, with the tie counts) and a per-item plot of the i^o margin against
the i^s margin. Ties are decided by infodecomp.aro.ties (difflens.info.aro.TIE_RULES)."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import pandas as pd  # noqa: E402

from difflens.info.aro import TIE_RULES, aggregate, item_outcomes  # noqa: E402
from difflens.info.plots import margin_scatter  # noqa: E402

ties = snakemake.params.ties
scores = pd.concat([pd.read_csv(p, keep_default_na=False, dtype={"sample_id": str}) for p in snakemake.input],
                   ignore_index=True)
outcomes = item_outcomes(scores, ties=ties)
table = aggregate(outcomes, min_group=snakemake.params.min_group).assign(draws=snakemake.params.draws)
outcomes.to_csv(snakemake.output.per_item, index=False, lineterminator="\n")
table.to_csv(snakemake.output.table, index=False, lineterminator="\n")
margin_scatter(outcomes, snakemake.output.plot, title=snakemake.params.title)
log.info("ARO accuracy (true caption scored best; n_ties: items whose true caption tied with its best negative, "
         "counted right for kind(s) %s and wrong otherwise, infodecomp.aro.ties = %s):\n%s",
         list(TIE_RULES[ties]) or "none", ties, table[table["metric"] != "group"].to_string(index=False))
