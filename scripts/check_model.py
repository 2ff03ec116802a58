"""Rule check_model: reload a model through the model layer and run the science checks on held-out data."""
import json
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.check.model_check import check_text_model  # noqa: E402
from difflens.models import load_model  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
model = load_model(p.kind, p.source, dtype=p.dtype, device=job_device(snakemake.resources))
log.info("loaded %s model from %s on %s (%s); layers: %s", p.kind, p.source, model.device, model.dtype,
         model.layers())
c = p.check
result = check_text_model(model, Dataset.load(Path(snakemake.input.data).parent), n_images=c["n_images"],
                          seed=p.seed, grid_path=snakemake.output.grid, n_samples=c["n_samples"],
                          sample_steps=c["sample_steps"], guidance=c["guidance"])
result["layers"] = model.layers()
Path(snakemake.output.json).write_text(json.dumps(result, indent=1) + "\n")
