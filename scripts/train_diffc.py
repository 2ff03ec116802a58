"""Rule train_diffc: Diff-C on the maps of one (model, data set, layer, timestep) for one target -> result JSON.

Maps come from the saved ones or from the denoiser on the fly (classify.mode); selection on val, test read once;
resumable from its work folder.
"""
import json
import time
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.classify.diffc import DiffCSettings, train_diffc  # noqa: E402
from difflens.classify.sources import CachedMaps, OnTheFlyMaps, choose_mode  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
t = int(w.timestep)
index = json.loads(Path(snakemake.input.index).read_text())
entry = next(e for e in index["entries"] if e["timestep"] == t and e["layer"] == w.layer)
store = FeatureStore(Path(snakemake.input.index).parents[3])
c = p.classify
mode = choose_mode(c["mode"], entry, c["cache_limit_gb"])
if mode == "cached":
    source = CachedMaps(store, w.model, w.dataset, w.layer, t, target=w.target, seed=p.seed, augment=c["augment"],
                        max_bytes=int(c["cache_limit_gb"] * 2 ** 30))
    device = torch.device(job_device(snakemake.resources) or ("cuda" if torch.cuda.is_available() else "cpu"))
else:
    from safetensors.torch import load_file

    from difflens.models import load_model

    denoiser = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
    if snakemake.input.empty_prompt:
        denoiser.set_condition("", load_file(snakemake.input.empty_prompt)["condition"])
    source = OnTheFlyMaps(store, denoiser, w.model, w.dataset, w.layer, t, target=w.target, seed=p.seed,
                          noise_draws=p.noise_draws, prompt=p.prompt, augment=c["augment"])
    device = denoiser.device
log.info("Diff-C on %s/%s %s t%d, target %s: %s maps %dx%dx%d, %d classes, rows %s", w.model, w.dataset, w.layer, t,
         w.target, mode, source.channels, *source.map_size, source.n_classes,
         {s: source.n(s) for s in ("train", "val", "test")})
settings = DiffCSettings(epochs=c["epochs"], lr=c["lr"], batch_size=c["batch_size"], width=c["width"],
                         dropout=c["dropout"], seed=p.seed)
start = time.perf_counter()
result = train_diffc(source, source.n_classes, settings, work_dir=p.work, device=device, log=log)
result.update(model=w.model, dataset=w.dataset, layer=w.layer, timestep=t, target=w.target, mode=mode,
              class_names=source.class_names, n_classes=source.n_classes)
Path(snakemake.output[0]).write_text(json.dumps(result, indent=1) + "\n")
log.info("best epoch %d: val %.4f, test %.4f", result["best_epoch"], result["val_accuracy"], result["test_accuracy"])
log.info(throughput_line(result["n_train"] * result["epochs"], time.perf_counter() - start, device))
