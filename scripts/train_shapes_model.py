"""Rule train_shapes_model: train the shapes-world diffusion model (GPU if present, else CPU; resumable)."""
import json
from pathlib import Path

from difflens.runlog import job_device, start_log

log = start_log(snakemake.log[0])

from difflens.models.shapes_arch import ShapesArch, block_types  # noqa: E402
from difflens.train.shapes import TrainConfig, train  # noqa: E402

t = dict(snakemake.params.train)
image_size = json.loads(Path(snakemake.input[0]).read_text())["image_size"]
down, up = block_types(t["cross_attention"])
arch = ShapesArch(image_size=image_size, block_out_channels=tuple(t["block_out_channels"]), down_block_types=down,
                  up_block_types=up, text_width=t["text_width"], space_to_depth=t["space_to_depth"],
                  text_time_embedding=t["text_time_embedding"], embedding_std=t["embedding_std"],
                  prediction_type=t["prediction_type"])
cfg = TrainConfig(steps=t["steps"], batch_size=t["batch_size"], lr=t["lr"], p_uncond=t["p_uncond"],
                  noise_levels=dict(t["noise_levels"]), seed=snakemake.params.seed, arch=arch)
summary = train(Path(snakemake.input[0]).parent, Path(snakemake.output[0]).parent, cfg,
                work_dir=snakemake.params.work, threads=snakemake.threads,
                device=job_device(snakemake.resources))
log.info("trained: %s", {k: v for k, v in summary.items() if k != "loss_every_50"})
