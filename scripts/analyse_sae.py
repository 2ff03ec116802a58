"""Rule analyse_sae: a trained k-SAE read on one split (sae.split) against the labels and attribute columns ->
latents.csv (one row per live latent), summary.json (sigma_label and purity in both definitions, sae.sigma's
headlined; the null of random image sets for the mean and for each latent; the single-set random baseline; best AUROC
per attribute value; the training metrics; and the same numbers for the run's two controls: its untrained state and
random directions, difflens.sae.controls) and a PNG grid of the top images of the highest-ranked latents."""
import json
import time
from pathlib import Path

from difflens.runlog import start_log, throughput_line

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.store import FeatureStore, target_columns  # noqa: E402
from difflens.sae.analysis import (latent_table, random_baseline, read_sae, read_summary,  # noqa: E402
                                   save_top_image_grid)
from difflens.sae.controls import INIT_FOLDER, control_saes  # noqa: E402
from difflens.sae.data import load_vectors  # noqa: E402
from difflens.sae.model import CONFIG_FILE, KSAE  # noqa: E402

torch.set_num_threads(snakemake.threads)
start = time.perf_counter()
w, p = snakemake.wildcards, snakemake.params
t = int(w.timestep)
folder = Path(snakemake.input.sae).parent
trained = json.loads((folder / CONFIG_FILE).read_text())
store = FeatureStore(Path(snakemake.input.index).parents[3])
x, rows, per_image = load_vectors(store, w.model, w.dataset, w.layer, t, input=w.input, split=p.split)
columns = target_columns(rows.columns)
key = "/".join((w.model, w.dataset, w.run, w.input, str(t), w.layer))
controls = {}  # read first and dropped, so that only the trained SAE's scores stay
for name, control in control_saes(KSAE.load(folder / INIT_FOLDER), p.seed, key).items():
    controls[name] = read_summary(read_sae(control, x, rows, per_image, columns, p.top, p.sigma, p.seed))
del control
sae = KSAE.load(folder)  # after the controls: two models at a time at most
read = read_sae(sae, x, rows, per_image, columns, p.top, p.sigma, p.seed)  # scores (images, n_latents): the one whole matrix kept
del x
labels, names, live, auc, sig = rows["label"].to_numpy(), read["names"], read["live"], read["auc"], read["sigma"]
scores = read["scores"]
table = latent_table(scores, labels, names, auc, top=p.top)
rank = {int(latent): i for i, latent in enumerate(sig["latents"])}
table.insert(1, "sigma_rank", [rank.get(int(latent), -1) for latent in table["latent"]])
for name, other in read["sigmas"].items():  # each definition's own top-10 sigma and purity (NaN: not eligible)
    at = {int(latent): i for i, latent in enumerate(other["latents"])}
    for metric in ("sigma", "purity"):
        table[f"{metric}_{name}"] = [other[metric][at[int(v)]] if int(v) in at else np.nan for v in table["latent"]]
table.to_csv(snakemake.output.latents, index=False, lineterminator="\n")
base = random_baseline(labels, top=p.top, seed=p.seed, ddof=sig["ddof"])
best, null = read["best_auroc"], read["null"]
summary = {**{k: trained[k] for k in ("model", "dataset", "layer", "timestep", "input", "run", "k", "n_latents",
                                      "activation") if k in trained},
           **{k: v for k, v in trained.items() if k.startswith(("train_", "val_"))},
           "split": p.split, "n_images": len(rows), **read_summary(read), "sigma_cumulative": sig["cumulative"],
           "random": base, "controls": controls}
Path(snakemake.output.summary).write_text(json.dumps(summary, indent=1) + "\n")
title = (f"{w.model}/{w.dataset} {w.layer} t{t} {w.input} ({w.run}): top {p.top} images of the "
         f"{p.grid_latents} latents of highest mean activation ({p.split} split)")
grid_latents = list(sig["latents"][:p.grid_latents])
if not grid_latents:
    log.warning("no latent fires on more than %d %s images, so none is ranked by sigma_label: the grid shows the "
                "first %d live latents instead", p.top, p.split, p.grid_latents)
    grid_latents = list(table["latent"][:p.grid_latents])
save_top_image_grid(snakemake.output.grid, Dataset.load(Path(snakemake.input.data).parent), rows, table,
                    grid_latents, title, p.top)
log.info("%d of %d latents live on %d %s images; sigma_label (%s) %.3f over %d latents (null of the mean of %d "
         "random sets: 5th pct %.3f, p = %.4f), purity %.3f (null 95th pct %.3f, p = %.4f); %.1f%% of latents above "
         "the single-set 95th purity percentile (chance %.1f%%, binomial p = %.3g); other definition: %s",
         len(live), sae.config.n_latents, len(rows), p.split, p.sigma, sig["sigma_label"], sig["n_eligible"],
         sig["n_eligible"], null["sigma"]["mean_p5"], null["sigma"]["p_value"], sig["purity_mean"],
         null["purity"]["mean_p95"], null["purity"]["p_value"], 100 * null["purity"]["beyond_share"],
         100 * null["purity"]["beyond_chance"], null["purity"]["beyond_p_value"],
         ", ".join(f"{n} sigma_label {s['sigma_label']:.3f} purity {s['purity_mean']:.3f}"
                   for n, s in read["sigmas"].items() if n != p.sigma))
for name, c in controls.items():
    log.info("control %s: %d live latents, sigma_label %.3f, purity %.3f, best AUROC %.3f", name, c["live_latents"],
             c["sigma_label"], c["purity"], max(c["best_auroc"].values(), default=float("nan")))
top_matches = sorted(best.items(), key=lambda kv: -kv[1])[:10]
log.info("best AUROC per attribute value (top 10): %s", ", ".join(f"{k} {v:.3f}" for k, v in top_matches))
if not np.isfinite(sig["sigma_label"]):
    log.warning("no latent fires on more than %d %s images: sigma_label is undefined", p.top, p.split)
log.info(throughput_line(len(rows), time.perf_counter() - start))  # with the peak host memory (sae.memory's request)
