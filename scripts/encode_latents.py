"""Rule encode_latents: one shard of a data set -> the model's latents (VAE mode x scaling factor), HDF5."""
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extraction import encode_latents  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
model = load_model(p.kind, p.source, dtype=p.dtype, **p.options)
log.info("loaded %s model from %s on %s (%s), resolution %d", p.kind, p.source, model.device, model.dtype,
         model.resolution)
summary = encode_latents(model, Dataset.load(Path(snakemake.input.data).parent), snakemake.output[0],
                         shard=int(w.shard), shard_size=p.shard_size, batch_size=p.batch_size,
                         workers=snakemake.threads, meta={"model": w.model, "dataset": w.dataset})
log.info("shard %s: %d rows, %d encoded, %d skipped", w.shard, summary["n_rows"], summary["n_valid"],
         len(summary["skipped"]))
