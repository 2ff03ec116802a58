"""Rule train_sae: a k-SAE on the train split of one (model, data set, layer, timestep, input) -> sae.safetensors +
sae_config.json (settings and val metrics) + curve.csv, beside each other, and the SAE's untrained state (the same
files in init/: the control that analyse_sae reads beside it)."""
import json
import time
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from difflens.extract.store import FeatureStore  # noqa: E402
from difflens.sae.data import load_vectors  # noqa: E402
from difflens.sae.model import SAEConfig, SAEError  # noqa: E402
from difflens.sae.controls import INIT_FOLDER  # noqa: E402
from difflens.sae.train import SAETrainSettings, evaluate, initial_sae, train_sae  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
t, run = int(w.timestep), p.run
store = FeatureStore(Path(snakemake.input.index).parents[3])
where = dict(model=w.model, dataset=w.dataset, layer=w.layer, timestep=t, input=w.input)
x, rows, per_image = load_vectors(store, w.model, w.dataset, w.layer, t, input=w.input, split="train",
                                  positions=p.positions, seed=p.seed)
x_val, _, _ = load_vectors(store, w.model, w.dataset, w.layer, t, input=w.input, split="val", positions=p.positions,
                           seed=p.seed)
d = x.shape[1]
try:
    config = SAEConfig(d=d, n_latents=run["expansion"] * d, k=run["k"], activation=run["activation"])
except SAEError as exc:
    raise SAEError(f"config key sae.runs.{w.run}: {exc} (n_latents = expansion {run['expansion']} x d {d})") from None
settings = SAETrainSettings(steps=run["steps"], batch_size=run["batch_size"], lr=run["lr"], aux_coef=run["aux_coef"],
                            aux_k=run["aux_k"], dead_steps=run["dead_steps"], dead_passes=run["dead_passes"],
                            seed=p.seed, warmup_steps=run.get("warmup_steps", 0))
log.info("k-SAE on %s: %d train vectors (%d images x %d) of d = %d; n = %d, k = %d, %s", where, len(x), len(rows),
         per_image, d, config.n_latents, config.k, config.activation)
device = torch.device(job_device(snakemake.resources) or ("cuda" if torch.cuda.is_available() else "cpu"))
start = time.perf_counter()
sae, curve = train_sae(x, config, settings, device=device, log=log)
seconds = time.perf_counter() - start
train_metrics, val_metrics = evaluate(sae, x), evaluate(sae, x_val)
metrics = {f"{split}_{k}": v for split, m in (("train", train_metrics), ("val", val_metrics)) for k, v in m.items()
           if k in ("fvu", "explained_variance", "l0", "dead_fraction")}
out = Path(snakemake.output.model).parent
sae.save(out, extra={**where, "run": w.run, "settings": run, "seed": p.seed, "positions_per_image": per_image,
                     "n_train_vectors": len(x), "seconds": round(seconds, 1), **metrics})
initial_sae(x, config, settings.seed)[0].save(out / INIT_FOLDER, extra={**where, "run": w.run, "seed": p.seed,
                                                                        "untrained": True})
pd.DataFrame(curve).to_csv(snakemake.output.curve, index=False, lineterminator="\n")
log.info("val FVU %.4f (explained variance %.4f), L0 %.2f, dead on train %.1f%%", metrics["val_fvu"],
         metrics["val_explained_variance"], metrics["val_l0"], 100 * metrics["train_dead_fraction"])
log.info(throughput_line(len(rows), seconds, device))
