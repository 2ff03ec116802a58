"""Rule mmse_curves: the MMSE of each image of a split against log-SNR, under its caption and under the empty prompt,
at levels spanning the model's trained range, with the Gaussian reference of the split's latent variances ->
mmse_curves.csv (long format: sample_id, prompt, timestep, logsnr, mmse, gaussian; ``difflens.info.mmse``)."""
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.estimators import require_text  # noqa: E402
from difflens.info.inputs import drop_unreadable, encode_samples, unreadable_images  # noqa: E402
from difflens.info.mmse import (curve_images, curve_information, curve_levels, gaussian_reference,  # noqa: E402
                                latent_variance, mmse_curves)
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
cfg, batch_size = p.mmse, p.estimator["batch_size"]
ds = Dataset.load(Path(snakemake.input.data).parent)
pool = curve_images(ds, cfg["split"], cfg["max_images"] and max(cfg["max_images"], cfg["reference_images"]))
pool = drop_unreadable(pool, unreadable_images(ds, pool["sample_id"]), "MMSE curves", log).reset_index(drop=True)
images = pool.head(cfg["max_images"]) if cfg["max_images"] else pool
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources), **p.options)
require_text(model, "the MMSE curves under a caption")
timesteps, logsnrs = curve_levels(model, cfg["n_levels"])
encode_batch = max(1, min(cfg["n_draws"], batch_size))  # the images of one denoiser call (the job's memory request)
reference = None
ref_ids = list(pool["sample_id"].head(cfg["reference_images"])) if cfg["reference_images"] else []
if len(ref_ids) == 1:
    log.warning("no Gaussian reference: split %s has one captioned image, a variance needs two", cfg["split"])
elif ref_ids:
    reference = gaussian_reference(latent_variance(model, ds, ref_ids, encode_batch), logsnrs)
    log.info("Gaussian reference from the latent variances of %d images of split %s", len(ref_ids), cfg["split"])
log.info("%d images of %s (split %s), %d levels (log-SNR %.2f .. %.2f), %d draws each, caption and empty prompt",
         len(images), ds.name, cfg["split"], len(logsnrs), float(logsnrs[0]), float(logsnrs[-1]), cfg["n_draws"])
latents = encode_samples(model, ds, list(images["sample_id"]), encode_batch)
curves = mmse_curves(model, latents, images, timesteps, logsnrs, n_draws=cfg["n_draws"], seed=p.seed,
                     batch_size=batch_size, reference=reference, progress=True)
curves.to_csv(snakemake.output[0], index=False, lineterminator="\n")
mean = curves.pivot_table(index="logsnr", columns="prompt", values="mmse").assign(
    gaussian=curves.groupby("logsnr")["gaussian"].first())
log.info("mean MMSE over the images (eps units, summed over %d latent elements):\n%s", latents[0].numel(),
         mean.round(3).to_string())
info = curve_information(curves)
log.info("i^s inside the levels' range (1/2 the area between the empty prompt's curve and the caption's): mean "
         "%.2f nats, min %.2f, max %.2f over %d images", info.mean(), info.min(), info.max(), len(info))
