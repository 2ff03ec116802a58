"""Rule train_diffc_<model>: Diff-C on the maps of one (model, data set, target) for the (timestep, layer) pairs of
the job's grouping (classify.group) -> one result JSON per pair.

Maps come from the saved ones or from the denoiser on the fly (classify.mode; on the fly as soon as one pair's maps
are not cached), every pair's maps of a batch made together; each classifier selected on val (and, with
classify.refit, retrained on train + val for the chosen epochs), test read once; resumable from the job's work
folder. On the fly, classify.augment_on: pixels augments the images before the VAE and classify.noise: per_epoch
draws new noise every epoch; cached maps keep extraction's noise and are augmented as maps (logged).
"""
import json
import time
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.classify.diffc import DiffCSettings, HeadSources, train_diffc_heads  # noqa: E402
from difflens.classify.sources import CachedMaps, OnTheFlyMaps, choose_mode, head_name  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
keys = [(int(t), layer) for t, layer in p.pairs]
index = json.loads(Path(snakemake.input.index).read_text())
entries = {(e["timestep"], e["layer"]): e for e in index["entries"]}
missing = [k for k in keys if k not in entries]
if missing:
    raise ValueError(f"{snakemake.input.index} has no activations of (timestep, layer) {missing}; it holds "
                     f"{sorted(entries)}")
store = FeatureStore(Path(snakemake.input.index).parents[3])
c = p.classify  # the classify keys this script reads (rules/classify.smk: DIFFC_SETTINGS)
settings = DiffCSettings(epochs=c["epochs"], lr=c["lr"], batch_size=c["batch_size"], width=c["width"],
                         dropout=c["dropout"], seed=p.seed, lr_schedule=c["lr_schedule"], lr_t_max=c["lr_t_max"],
                         conv_dropout=c["conv_dropout"], refit=c["refit"])
modes = {k: choose_mode(c["mode"], entries[k], c["cache_limit_gb"]) for k in keys}
mode = "cached" if all(m == "cached" for m in modes.values()) else "on_the_fly"
(t0, layer0) = keys[0]
recipe = {"augment": c["augment"], "augment_on": c["augment_on"], "noise": c["noise"]}
if mode == "cached":
    source = HeadSources({head_name(t, layer): CachedMaps(
        store, p.model, w.dataset, layer, t, target=w.target, seed=p.seed, **recipe,
        max_bytes=int(c["cache_limit_gb"] * 2 ** 30)) for t, layer in keys})
    device = torch.device(job_device(snakemake.resources) or ("cuda" if torch.cuda.is_available() else "cpu"))
    first = source.sources[head_name(t0, layer0)]
else:
    from safetensors.torch import load_file

    from difflens.data.common import Dataset
    from difflens.models import load_model

    denoiser = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
    if snakemake.input.empty_prompt:
        denoiser.set_condition("", load_file(snakemake.input.empty_prompt)["condition"])
    images = Dataset.load(Path(snakemake.input.data).parent) if snakemake.input.data else None
    source = first = OnTheFlyMaps(store, denoiser, p.model, w.dataset, layer0, t0, target=w.target, seed=p.seed,
                                  noise_draws=p.noise_draws, prompt=p.prompt, keys=keys, images=images, **recipe)
    device = denoiser.device
log.info("Diff-C on %s/%s, target %s, %d classes, rows %s: %s maps of %s", p.model, w.dataset, w.target,
         first.n_classes, {s: first.n(s) for s in ("train", "val", "test")}, mode,
         ", ".join(f"{h} {tuple(shape)}" for h, shape in source.shapes.items()))
start = time.perf_counter()
results = train_diffc_heads(source, first.n_classes, settings, work_dir=p.work, device=device, log=log)
outputs = {Path(o).parent.name + "/" + Path(o).stem: o for o in snakemake.output}  # "t25/up_blocks.1" -> path
for t, layer in keys:
    out, result = outputs[head_name(t, layer)], results[head_name(t, layer)]
    result.update(model=p.model, dataset=w.dataset, layer=layer, timestep=t, target=w.target, mode=mode,
                  class_names=first.class_names, n_classes=first.n_classes, heads_in_job=len(keys))
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    log.info("%s: best epoch %d: val %.4f, test %.4f", head_name(t, layer), result["best_epoch"],
             result["val_accuracy"], result["test_accuracy"])
seen = sum(r["n_train"] * settings.epochs + (r["n_refit"] * r["best_epoch"] if settings.refit else 0)
           for r in results.values())  # images each classifier trained on (the refit's too)
log.info(throughput_line(seen, time.perf_counter() - start, device))
