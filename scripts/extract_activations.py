"""Rule extract_activations_<model>: one latents shard -> one HDF5 file per configured (timestep, layer).

Loads the denoiser, and the text encoder only for a non-empty prompt (the empty prompt's condition is read from
the file encode_empty_prompt wrote).
"""
import time

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from difflens.extract.activations import extract_activations  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
if snakemake.input.empty_prompt:
    model.set_condition("", load_file(snakemake.input.empty_prompt)["condition"])
log.info("loaded %s model from %s on %s (%s), components %s", p.kind, p.source, model.device, model.dtype,
         model.components)
outputs = {(int(t), layer): path for (t, layer), path in zip(p.outputs, snakemake.output)}
start = time.perf_counter()
summary = extract_activations(model, snakemake.input.latents, outputs, seed=p.seed, noise_draws=p.noise_draws,
                              prompt=p.prompt, batch_size=p.batch_size, save_maps=p.save_maps,
                              compression=p.compression, meta={"model": p.model, "dataset": w.dataset})
log.info("shard %s: %s", w.shard, summary)
log.info(throughput_line(summary["n_valid"], time.perf_counter() - start, model.device))
