"""Rule encode_latents: one shard of a data set -> the model's latents (VAE mode x scaling factor), HDF5.

Loads the VAE alone (the shapes model's "VAE" is a reshape: nothing is loaded).
"""
import time
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.latents import encode_latents  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
log.info("loaded %s model from %s on %s (%s), components %s, resolution %d", p.kind, p.source, model.device,
         model.dtype, model.components, model.resolution)
start = time.perf_counter()
summary = encode_latents(model, Dataset.load(Path(snakemake.input.data).parent), snakemake.output[0],
                         shard=int(w.shard), shard_size=p.shard_size, batch_size=p.batch_size,
                         workers=snakemake.threads, meta={"model": w.model, "dataset": w.dataset})
log.info("shard %s: %d rows, %d encoded, %d skipped", w.shard, summary["n_rows"], summary["n_valid"],
         len(summary["skipped"]))
log.info(throughput_line(summary["n_valid"], time.perf_counter() - start, model.device))
