"""Rule extract_activations_<model>: one latents shard at one timestep -> one HDF5 file per configured layer."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.extraction import extract_activations  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
model = load_model(p.kind, p.source, dtype=p.dtype, **p.options)
log.info("loaded %s model from %s on %s (%s)", p.kind, p.source, model.device, model.dtype)
outputs = {(int(w.timestep), layer): path for layer, path in zip(p.layers, snakemake.output)}
summary = extract_activations(model, snakemake.input.latents, outputs, seed=p.seed, noise_draws=p.noise_draws,
                              prompt=p.prompt, batch_size=p.batch_size, save_maps=p.save_maps,
                              compression=p.compression, meta={"model": p.model, "dataset": w.dataset})
log.info("t=%s shard %s: %s", w.timestep, w.shard, summary)
