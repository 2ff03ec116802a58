"""Rule pca_views: the top-3 principal components of one layer's maps at one timestep as RGB images, beside the
first classify-test images of a data set (Revelio Fig. 10)."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from difflens.classify.pca import pca_rgb, save_pca_figure  # noqa: E402
from difflens.classify.sources import OnTheFlyMaps  # noqa: E402
from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.store import FeatureStore  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
t = int(w.timestep)
denoiser = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
if snakemake.input.empty_prompt:
    denoiser.set_condition("", load_file(snakemake.input.empty_prompt)["condition"])
store = FeatureStore(Path(snakemake.input.index).parents[3])
source = OnTheFlyMaps(store, denoiser, w.model, w.dataset, w.layer, t, seed=p.seed, noise_draws=p.noise_draws,
                      prompt=p.prompt, augment=())
maps, _ = next(source.batches("test", p.n_images, epoch=0, train=False))
ids = list(source.rows["test"]["sample_id"][:len(maps)])
data = Dataset.load(Path(snakemake.input.data).parent)
images = np.stack([np.asarray(data.load_image(sid).convert("RGB").resize((denoiser.resolution,) * 2)) for sid in ids])
save_pca_figure(images, pca_rgb(maps), snakemake.output[0], titles=ids,
                title=f"{w.model} {w.layer} t={t}: top-3 principal components of {tuple(maps.shape[1:])} maps as RGB")
log.info("PCA view of %d test images of %s: %s", len(ids), w.dataset, snakemake.output[0])
