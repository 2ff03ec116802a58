"""Rule intervene_words: invert images of one (model, data set), regenerate them with a word omitted or swapped,
and correlate the change with the word's CMI maps (i^o and i^s) and attention maps (traced during the regeneration and
on the estimator's draws), and with the mask baselines where the data set has masks for every edited word ->
intervention_items.csv (one line per edit), intervention.csv (image- and pixel-level
Pearson correlations with bootstrap intervals, and each map's paired difference with each mask baseline; layout in
``difflens.info.intervene``) and intervention_maps.npz (the change, CMI, attention and mask maps)."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.info.inputs import drop_unreadable, unreadable_images, word_rows  # noqa: E402
from difflens.info.intervene import run_intervention, why_no_masks  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
info, cfg = p.estimator, p.intervene  # the estimator keys and the intervene keys this script reads (rules/info.smk)
ds = Dataset.load(Path(snakemake.input.data).parent)
rows = word_rows(ds, [cfg["split"]], cfg["max_images"], need_masks=False)
rows = drop_unreadable(rows, unreadable_images(ds, rows["sample_id"]), "intervention", log).reset_index(drop=True)
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
sampler = sampler_for(info, model)
log.info("%d images of %s, %d word(s) each (omitted: %s), %s %d steps, %d draws for the maps",
         rows["sample_id"].nunique(), ds.name, cfg["words_per_image"], cfg["omit"], cfg["solver"], cfg["steps"],
         info["n_draws"])
edits, change, preds, table = run_intervention(
    model, ds, rows, swaps=cfg["swaps"], words_per_image=cfg["words_per_image"], steps=cfg["steps"],
    solver=cfg["solver"], n_draws=info["n_draws"], sampler=sampler, seed=p.seed, batch_size=info["batch_size"],
    n_boot=cfg["n_boot"], omit=cfg["omit"])
edits.to_csv(snakemake.output.per_item, index=False, lineterminator="\n")
# how the edits were made, beside the correlations: the paper's Table 4 is Heun, 100 steps, the word replaced by "_"
table = table.assign(steps=cfg["steps"], solver=cfg["solver"], omit=cfg["omit"])
table.to_csv(snakemake.output.table, index=False, lineterminator="\n")
np.savez_compressed(snakemake.output.maps, change=change.astype(np.float32), **{k: v.astype(np.float32)
                                                                                for k, v in preds.items()})
if model.kind == "shapes" and cfg["omit"] == "placeholder":
    log.warning("infodecomp.intervene.omit: placeholder on a shapes model: its word-level tokenizer has no '_', so "
                "the omit prompt holds [UNK], a token it never saw in training (omit: delete drops the word)")
if reason := why_no_masks(ds, edits):
    log.info("no mask baselines: %s", reason)
log.info("Pearson correlation of the change with each map (95%% bootstrap interval over edits; <map>-<mask>: the "
         "paired difference of the two correlations):\n%s", table.to_string(index=False))
