"""Rule steer_latents: splice one k-SAE into its model's denoiser and steer its most word-aligned latents
(steer.latents of them, among steer.words) on steer.images images of steer.split -> chosen.csv (the latents, their
words and AUROC, clamp values), items.csv (one line per source x edit x image), effects.csv (per edit: mean change
and, on the shapes world, success and off-target rates), correlations.csv (the change against the word's CMI map and
the latent's heat map, image and pixel level, bootstrap intervals), images.npz (the first images of every edit) and
grid.png (latents x edits); with steer.control, control_effects.csv and control_correlations.csv: the same for the
SAE's untrained state, its latents of highest AUROC for the same attributes (column ``matches``: the steered latent).
Layout of the tables: ``difflens.steer.run``."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.models import load_model  # noqa: E402
from difflens.sae.data import load_vectors  # noqa: E402
from difflens.sae.model import KSAE  # noqa: E402
from difflens.steer.choose import choose_latents, clamp_values, edits_for, matched_latents  # noqa: E402
from difflens.steer.figures import save_steering_grid  # noqa: E402
from difflens.steer.run import run_steering  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
cfg, t = p.steer, int(w.timestep)
ds = Dataset.load(Path(snakemake.input.data).parent)
rows = ds.split(cfg["split"]).head(cfg["images"]).reset_index(drop=True)
if rows.empty:
    raise ValueError(f"steer.split: data set {ds.name!r} has no {cfg['split']!r} images")
device = job_device(snakemake.resources)
sae = KSAE.load(Path(snakemake.input.sae).parent, device=device)
chosen = choose_latents(pd.read_csv(snakemake.input.latents), cfg["latents"], cfg["words"])
x = None
if "clamp" in cfg["edits"] or cfg["control"]:  # the vectors the SAE analysis read (sae.split)
    store = FeatureStore(Path(snakemake.input.index).parents[3])
    x, vector_rows, per_image = load_vectors(store, w.model, w.dataset, w.layer, t, input=w.input, split=p.sae_split)


def plan(model_sae, picked):
    """The edits of the picked latents of one SAE (clamp values from its own codes, noted in ``picked``)."""
    clamps = clamp_values(model_sae, x, list(picked["latent"]), cfg["clamp_quantiles"]) if "clamp" in cfg["edits"] \
        else {}
    for q in cfg["clamp_quantiles"] if clamps else []:
        picked[f"clamp_q{q:g}"] = [clamps[(int(j), q)] for j in picked["latent"]]
    return edits_for(list(picked["latent"]), cfg["edits"], cfg["strengths"], clamps)


edits = plan(sae, chosen)
if cfg["control"]:  # the untrained SAE, its latents matched to the steered latents' attributes
    control = KSAE.load(Path(snakemake.input.init).parent, device=device)
    matched = matched_latents(control, x, vector_rows, per_image, chosen)
    control_edits = plan(control, matched)
del x
log.info("steering %d latents of %s/%s %s t%d %s (%s): %s; %d edits each on %d %s images from %s, %s %d steps, "
         "edits at t in %s, prompt %s, guidance %g, %s weighting", len(chosen), w.model, w.dataset, w.layer, t,
         w.input, w.run, ", ".join(f"#{j} {word} (AUROC {a:.3f})" for j, word, a in
                                  zip(chosen["latent"], chosen["word"], chosen["auroc"])),
         len(edits) // len(chosen), len(rows), cfg["split"], "+".join(cfg["sources"]), cfg["solver"], cfg["steps"],
         cfg["t_range"], cfg["prompt"], cfg["guidance"], cfg["weighting"])
model = load_model(p.kind, p.source, dtype=p.dtype, device=device, **p.options)
settings = dict(input=w.input, timestep=t, cfg=cfg, sampler=sampler_for(p.estimator, model),
                n_draws=p.estimator["n_draws"], seed=p.seed)
shared = {}  # the image latents, each source's unedited regeneration and the words' CMI maps: the control's too
out = run_steering(model, sae, ds, rows, chosen, edits, layer=w.layer, shared=shared, **settings)
if cfg["control"]:
    log.info("the untrained control: %s", ", ".join(f"#{j} for {word} (AUROC {a:.3f})" for j, word, a in
                                                    zip(matched["latent"], matched["word"], matched["auroc"])))
    got = run_steering(model, control, ds, rows, matched, control_edits, layer=w.layer, show=0,
                       shared=shared, **settings)
    of_word = dict(zip(matched["word"], matched["matches"]))
    control_tables = [got[k].assign(matches=got[k]["word"].map(of_word)) for k in ("effects", "correlations")]
else:
    control_tables = [pd.DataFrame(columns=["source", "latent", "word", "edit", "matches"])] * 2
for table, path in zip(control_tables, (snakemake.output.control_effects, snakemake.output.control_correlations)):
    table.to_csv(path, index=False, lineterminator="\n")
chosen.to_csv(snakemake.output.chosen, index=False, lineterminator="\n")
for name, path in (("items", snakemake.output.per_image), ("effects", snakemake.output.effects),
                   ("correlations", snakemake.output.correlations)):
    out[name].to_csv(path, index=False, lineterminator="\n")
np.savez_compressed(snakemake.output.images, **out["images"])
title = f"{w.model}/{w.dataset} {w.layer} t{t} {w.input} ({w.run}): steered latents x edits ({cfg['sources'][0]})"
save_steering_grid(snakemake.output.grid, out["images"], chosen, cfg["sources"][0], title)
shown = [c for c in ("source", "latent", "word", "edit", "mean_change", "n_eligible", "success_rate",
                     "off_target_rate", "presence_before", "presence_after") if c in out["effects"].columns]
log.info("effects:\n%s", out["effects"][shown].to_string(index=False))
log.info("correlations of the change with each predictor:\n%s", out["correlations"].to_string(index=False))
