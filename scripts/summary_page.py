"""Rule summary_page: this run's headline numbers beside the papers' (summary.md and summary.html), each marked with
the model and data set it came from."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.report.summary import headline_rows, write_html, write_markdown  # noqa: E402

rows = headline_rows({kind: list(paths) for kind, paths in snakemake.input.items()}, snakemake.params.models,
                     snakemake.params.identity)
write_markdown(rows, snakemake.output.md)
write_html(rows, snakemake.output.html, browser=snakemake.params.browser)
log.info("%d headline rows:\n%s", len(rows), rows.to_string(index=False))
