"""Rule choose_clip_prompts (extraction.prompt clip): the prompt of each image of one data set, the template filled
with the class name a CLIP model finds closest to the image -> prompts/<data set>/clip_prompts.csv (sample_id,
class_name, prompt, similarity)."""
import time
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import torch  # noqa: E402

from difflens.data.common import Dataset  # noqa: E402
from difflens.extract.clip_prompts import ClipPromptChooser, choose_prompts, load_clip  # noqa: E402
from difflens.extract.prompts import write_chosen  # noqa: E402

torch.set_num_threads(snakemake.threads)
p = snakemake.params
dataset = Dataset.load(Path(snakemake.input.data).parent)
device = job_device(snakemake.resources) or ("cuda" if torch.cuda.is_available() else "cpu")
processor, model = load_clip(p.source, device=device)
chooser = ClipPromptChooser(processor, model, dataset.classes, p.template)
start = time.perf_counter()
rows = choose_prompts(chooser, dataset, batch_size=p.batch_size)
write_chosen(rows, snakemake.output[0])
names = dict(zip(dataset.samples["sample_id"], dataset.samples["label_name"]))
agree = sum(r["class_name"] == names[r["sample_id"]] for r in rows)
log.info("%s: %d of %d images given a prompt by %s from %d class prompts (template %r); %d distinct prompts; "
         "CLIP's class is the label for %d (%.1f%%; logged only, never used)", dataset.name, len(rows),
         len(dataset.samples), p.source, len(chooser.prompts), p.template, len({r["prompt"] for r in rows}), agree,
         100 * agree / max(1, len(rows)))
log.info(throughput_line(len(rows), time.perf_counter() - start, device))
