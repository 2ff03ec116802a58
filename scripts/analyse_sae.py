"""Rule analyse_sae: a trained k-SAE read on one split (sae.split) against the labels and attribute columns ->
latents.csv (one row per live latent), summary.json (sigma_label, purity, their random baselines, best AUROC per
attribute value, the training metrics) and a PNG grid of the top images of the highest-ranked latents."""
import json
import time
from pathlib import Path

from difflens.runlog import start_log, throughput_line

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.store import FeatureStore, target_columns  # noqa: E402
from difflens.sae.analysis import (attribute_auroc, image_scores, indicator_columns, latent_table,  # noqa: E402
                                   live_latents, random_baseline, save_top_image_grid, sigma_label)
from difflens.sae.data import load_vectors  # noqa: E402
from difflens.sae.model import CONFIG_FILE, KSAE  # noqa: E402

torch.set_num_threads(snakemake.threads)
start = time.perf_counter()
w, p = snakemake.wildcards, snakemake.params
t = int(w.timestep)
folder = Path(snakemake.input.sae).parent
sae = KSAE.load(folder)
trained = json.loads((folder / CONFIG_FILE).read_text())
store = FeatureStore(Path(snakemake.input.index).parents[3])
x, rows, per_image = load_vectors(store, w.model, w.dataset, w.layer, t, input=w.input, split=p.split)
scores = image_scores(sae, x, positions=per_image)  # (images, n_latents): the one whole matrix the analysis holds
del x
labels = rows["label"].to_numpy()
names, indicators = indicator_columns(rows, target_columns(rows.columns))
live = live_latents(scores)
auc = attribute_auroc(scores, indicators, live)
table = latent_table(scores, labels, names, auc, top=p.top)
sig = sigma_label(scores, labels, top=p.top)
rank = {int(latent): i for i, latent in enumerate(sig["latents"])}
table.insert(1, "sigma_rank", [rank.get(int(latent), -1) for latent in table["latent"]])
table.to_csv(snakemake.output.latents, index=False, lineterminator="\n")
base = random_baseline(labels, top=p.top, seed=p.seed)
best = {name: float(auc[:, j].max()) for j, name in enumerate(names)} if len(live) else {}
summary = {**{k: trained[k] for k in ("model", "dataset", "layer", "timestep", "input", "run", "k", "n_latents",
                                      "activation") if k in trained},
           **{k: v for k, v in trained.items() if k.startswith(("train_", "val_"))},
           "split": p.split, "n_images": len(rows), "live_latents": int(len(live)), "sigma_eligible": sig["n_eligible"],
           "sigma_label": sig["sigma_label"], "purity": sig["purity_mean"], "sigma_cumulative": sig["cumulative"],
           "random": base, "best_auroc": best}
Path(snakemake.output.summary).write_text(json.dumps(summary, indent=1) + "\n")
title = (f"{w.model}/{w.dataset} {w.layer} t{t} {w.input} ({w.run}): top {p.top} images of the "
         f"{p.grid_latents} latents of highest mean activation ({p.split} split)")
save_top_image_grid(snakemake.output.grid, Dataset.load(Path(snakemake.input.data).parent), rows, table,
                    list(sig["latents"][:p.grid_latents]) or list(table["latent"][:p.grid_latents]), title, p.top)
log.info("%d of %d latents live on %d %s images; sigma_label %.3f (random %.3f, 5th pct %.3f), purity %.3f "
         "(random %.3f, 95th pct %.3f)", len(live), sae.config.n_latents, len(rows), p.split, sig["sigma_label"],
         base["sigma"]["mean"], base["sigma"]["p5"], sig["purity_mean"], base["purity"]["mean"],
         base["purity"]["p95"])
top_matches = sorted(best.items(), key=lambda kv: -kv[1])[:10]
log.info("best AUROC per attribute value (top 10): %s", ", ".join(f"{k} {v:.3f}" for k, v in top_matches))
if not np.isfinite(sig["sigma_label"]):
    log.warning("no latent fires on more than %d %s images: sigma_label is undefined", p.top, p.split)
log.info(throughput_line(len(rows), time.perf_counter() - start))  # with the peak host memory (sae.memory's request)
