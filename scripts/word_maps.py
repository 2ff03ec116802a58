"""Rule word_maps: the MI, CMI and attention maps of every (image, word) row of a data set's words.csv, no masks
needed -> word_maps.npz (the maps on the latent grid, as localization_maps.npz holds them), word_maps.csv (per word:
its totals in nats) and word_maps.png (the first images' words over the part of the image the model sees); each
finished image is appended to a .partial file, which a restarted job resumes from."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.estimators import sampler_for  # noqa: E402
from difflens.info.inputs import drop_unreadable, model_view, unreadable_images  # noqa: E402
from difflens.info.records import job_identity  # noqa: E402
from difflens.info.word_maps import maps_rows, word_maps  # noqa: E402
from difflens.models import load_model  # noqa: E402
from difflens.report.information import pick_map_rows, plot_heat_maps  # noqa: E402

torch.set_num_threads(snakemake.threads)
p, w, out = snakemake.params, snakemake.wildcards, snakemake.output
est = p.estimator
ds = Dataset.load(Path(snakemake.input.data).parent)
rows = maps_rows(ds, p.maps)
rows = drop_unreadable(rows, unreadable_images(ds, rows["sample_id"]), "word maps", log).reset_index(drop=True)
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
sampler = sampler_for(est, model)
log.info("%d word rows on %d images of %s (split %s), %d draws each, %s", len(rows), rows["sample_id"].nunique(),
         ds.name, p.maps["split"], est["n_draws"], sampler)
totals = word_maps(model, ds, rows, out.maps, n_draws=est["n_draws"], sampler=sampler, seed=p.seed,
                   batch_size=est["batch_size"], identity=job_identity(p, snakemake.input))
totals.to_csv(out.table, index=False, lineterminator="\n")
with np.load(out.maps) as z:
    maps = {k: z[k] for k in z.files}
shown = pick_map_rows(maps)
images = {sid: model_view(ds.load_image(sid), model.geometry) for sid in dict.fromkeys(maps["sample_id"][shown])}
plot_heat_maps(maps, shown, images, out.plot, None, f"{w.model} on {w.dataset}: word maps")
log.info("the words the images support most, by i^s CMI (nats; negative: the image contradicts the word):\n%s",
         totals.sort_values("cmi_s_nats", ascending=False).head(10).to_string(index=False))
