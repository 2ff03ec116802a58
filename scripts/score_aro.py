"""Rule score_aro: i^o, i^s and the denoising error of every candidate caption of one shard of a data set's ARO
items -> one CSV (one line per item and candidate); a stopped job resumes from its .partial file."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.aro import score_shard, select_items, shard_of  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.info.inputs import drop_unreadable, unreadable_images  # noqa: E402
from difflens.info.records import job_identity  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
info, aro = p.estimator, p.aro  # the estimator keys and the aro keys this script reads (rules/info.smk)
ds = Dataset.load(Path(snakemake.input.data).parent)
rows = shard_of(select_items(ds.aro, ds.samples, aro["split"], aro["max_items"], ds.name), int(w.shard),
                aro["n_shards"])
rows = drop_unreadable(rows, unreadable_images(ds, rows["sample_id"]), f"ARO shard {w.shard}", log)
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
sampler = sampler_for(info, model)
log.info("shard %s of %d: %d items on %d images of %s (split %s), %d draws each, %s", w.shard, aro["n_shards"],
         len(rows), rows["sample_id"].nunique(), ds.name, aro["split"], aro["n_draws"] or info["n_draws"], sampler)
result = score_shard(model, ds, rows, snakemake.output[0], n_draws=aro["n_draws"] or info["n_draws"], sampler=sampler,
                     seed=p.seed, batch_size=info["batch_size"], identity=job_identity(p, snakemake.input))
log.info("wrote %d candidate lines", len(result))
