"""Rule encode_empty_prompt: the empty prompt's condition of one model, encoded once on the CPU (safetensors)."""
from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from safetensors.torch import save_file  # noqa: E402

from difflens.models import load_model  # noqa: E402

p = snakemake.params
model = load_model(p.kind, p.source, dtype="float32", device="cpu", **p.options)
condition = model.encode_text([""])[0].contiguous()
save_file({"condition": condition}, snakemake.output[0], metadata={"kind": p.kind})  # no path: results stay movable
log.info("empty prompt of %s: condition %s %s", p.source, tuple(condition.shape), condition.dtype)
