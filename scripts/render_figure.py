"""Rule render_figure: one paper item (difflens.report.catalog) from its inputs -> figures/<family>/<item>.png, .pdf
and the .csv behind it."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.report.items import render  # noqa: E402
from difflens.report.style import Palette  # noqa: E402

p = snakemake.params
inputs = {kind: list(paths) for kind, paths in snakemake.input.items()}
log.info("%s (%s): %s", p.paper, p.key, {k: len(v) for k, v in inputs.items()})
table = render(p.key, inputs, snakemake.output.png, snakemake.output.pdf, snakemake.output.csv,
               palette=Palette(**p.palette), results=p.results, dit_models=p.dit_models,
               grid_latents=p.grid_latents, identity=p.identity)
log.info("wrote %s (%d table rows); at paper scale: %s", snakemake.output.png, len(table), p.config_file)
