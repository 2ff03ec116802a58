"""Rule extract_activations_<model>: one latents shard -> one HDF5 file per configured (timestep, layer).

Loads the denoiser, and the text encoder only for a non-empty prompt (the empty prompt's condition is read from
the file encode_empty_prompt wrote). With extraction.prompt clip, each image's prompt is read from the data set's
CLIP choices (choose_clip_prompts), and the files record the CLIP model and template (attribute prompt_clip).
"""
import time

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from difflens.extract.activations import extract_activations  # noqa: E402
from difflens.extract.prompts import read_chosen  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w = snakemake.params, snakemake.wildcards
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
if snakemake.input.empty_prompt:
    model.set_condition("", load_file(snakemake.input.empty_prompt)["condition"])
log.info("loaded %s model from %s on %s (%s), components %s", p.kind, p.source, model.device, model.dtype,
         model.components)
outputs = {(int(t), layer): path for (t, layer), path in zip(p.outputs, snakemake.output)}
chosen = read_chosen(snakemake.input.prompts[0]) if snakemake.input.prompts else None
meta = {"model": p.model, "dataset": w.dataset, **({"prompt_clip": dict(p.prompt_clip)} if p.prompt_clip else {})}
start = time.perf_counter()
summary = extract_activations(model, snakemake.input.latents, outputs, seed=p.seed, noise_draws=p.noise_draws,
                              prompt=p.prompt, batch_size=p.batch_size, save_maps=p.save_maps,
                              compression=p.compression, meta=meta, chosen=chosen)
log.info("shard %s: %s", w.shard, summary)
log.info(throughput_line(summary["n_valid"], time.perf_counter() - start, model.device))
