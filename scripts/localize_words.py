"""Rule localize_words: one shard of the word rows of a (model, data set) (every word of an image in the same
shard): MI, CMI and attention maps on the latent grid and, against the masks, every row's IoU at each threshold ->
localize/shard-<k>.npz; each finished image is appended to a .partial file, which a restarted job resumes from."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.info.localize_shards import localize_rows, localize_shard, planned_shard  # noqa: E402
from difflens.info.memory import read_plan  # noqa: E402
from difflens.info.records import job_identity  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
est, loc = p.estimator, p.localize
ds = Dataset.load(Path(snakemake.input.data).parent)
plan = read_plan(snakemake.input.plan)
rows = planned_shard(localize_rows(ds, loc, plan["skipped"], class_labels=p.class_labels), int(w.shard), plan,
                    snakemake.input.plan)
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
sampler = sampler_for(est, model)
log.info("shard %s of %d: %d word rows on %d images of %s, %d draws each (maps kept at %s draws), %s; attention "
         "baseline by DDIM inversion: %s steps", w.shard, plan["n_shards"], len(rows), rows["sample_id"].nunique(),
         ds.name, est["n_draws"], p.counts, sampler, loc["ddim_steps"] or "off")
if ds.objects is None:
    log.warning("%s has no objects.csv (no masks): maps only, no IoU", ds.name)
result = localize_shard(model, ds, rows, snakemake.output[0], n_draws=est["n_draws"], sampler=sampler, seed=p.seed,
                        n_thresholds=loc["n_thresholds"], batch_size=est["batch_size"],
                        identity=job_identity(p, snakemake.input), counts=p.counts, ddim_steps=loc["ddim_steps"])
log.info("wrote %d rows", len(result["row"]))
