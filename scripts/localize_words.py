"""Rule localize_words: MI, CMI and attention maps of every word row of the held-out and evaluation images of one
(model, data set) -> maps.npz (latent grid), per-row IoU (localization_items.csv) and mIoU per method and word type
at the held-out threshold and at the oracle one (localization.csv)."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.info.inputs import word_rows  # noqa: E402
from difflens.info.localize import compute_maps, evaluate, ground_truth  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
info, loc = p.infodecomp, p.infodecomp["localize"]
ds = Dataset.load(Path(snakemake.input.data).parent)
splits = list(dict.fromkeys([loc["calibration_split"], loc["split"]]))
rows = word_rows(ds, splits, loc["max_images"], need_masks=True)
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
sampler = sampler_for(info, model)
log.info("%d word rows on %d images of %s (splits %s), %d draws each, %s", len(rows), rows["sample_id"].nunique(),
         ds.name, splits, info["n_draws"], sampler)
maps = compute_maps(model, ds, rows, n_draws=info["n_draws"], sampler=sampler, seed=p.seed,
                    batch_size=info["batch_size"])
np.savez_compressed(snakemake.output.maps, sample_id=rows["sample_id"].to_numpy(str),
                    word=rows["word"].to_numpy(str), word_type=rows["word_type"].to_numpy(str),
                    **{k: v.astype(np.float32) for k, v in maps.items()})
if ds.objects is None:
    log.warning("%s has no objects.csv (no masks): maps only, no mIoU", ds.name)
    rows.assign(mi_nats=maps["mi_nats"], cmi_nats=maps["cmi_nats"]).to_csv(snakemake.output.per_item, index=False)
    Path(snakemake.output.table).write_text("word_type,n,threshold_source\n")
else:
    masks = ground_truth(ds, rows, model.resolution)
    per_row, summary = evaluate(rows, maps, masks, calibration_split=loc["calibration_split"], seed=p.seed,
                                n_thresholds=loc["n_thresholds"])
    per_row.assign(mi_nats=maps["mi_nats"], cmi_nats=maps["cmi_nats"]).to_csv(snakemake.output.per_item, index=False)
    summary.to_csv(snakemake.output.table, index=False, lineterminator="\n")
    log.info("mIoU (held-out threshold; ':oracle' = best threshold on the evaluation rows):\n%s",
             summary.to_string(index=False))
