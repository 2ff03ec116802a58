"""Rule plan_localization: the word rows of one (model, data set) that localize_words scores, split by image into
infodecomp.localize.n_shards shards -> plan.json (rows, images and the most words of a caption per shard, which
the shard jobs' memory requests read; and the images that cannot be decoded, with the reason, which every shard and
the collected tables leave out)."""
import json
from pathlib import Path

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

from difflens.data.common import Dataset  # noqa: E402
from difflens.info.inputs import drop_unreadable, unreadable_images  # noqa: E402
from difflens.info.localize_shards import localize_rows, shard_plan  # noqa: E402

loc = snakemake.params.localize
ds = Dataset.load(Path(snakemake.input.data).parent)
rows = localize_rows(ds, loc, class_labels=snakemake.params.class_labels)
skipped = unreadable_images(ds, rows["sample_id"])  # left out of every shard and of the collected tables
plan = shard_plan(drop_unreadable(rows, skipped, "localization plan", log).reset_index(drop=True), loc["n_shards"])
plan["skipped"] = skipped
Path(snakemake.output[0]).write_text(json.dumps(plan, indent=1) + "\n")
log.info("%d word rows on %d images of %s in %d shards (rows per shard %d-%d)", plan["n_rows"], plan["n_images"],
         ds.name, plan["n_shards"], min(s["rows"] for s in plan["shards"]), max(s["rows"] for s in plan["shards"]))
