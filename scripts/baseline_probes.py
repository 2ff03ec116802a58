"""Rule baseline_probes: an external baseline (CLIP, DINOv2, ...) on one data set -> its image features under the
linear probe of every probe target -> probes.csv (accuracy-table rows: model = the baseline's name, layer image)."""
from pathlib import Path

from difflens.runlog import job_device, start_log, throughput_line

log = start_log(snakemake.log[0])

import time  # noqa: E402

import torch  # noqa: E402

from difflens.classify.baselines import (baseline_probe_table, image_features, load_image_encoder,  # noqa: E402
                                        sample_rows)
from difflens.data.common import Dataset  # noqa: E402

torch.set_num_threads(snakemake.threads)
w, p = snakemake.wildcards, snakemake.params
dataset = Dataset.load(Path(snakemake.input.data).parent)
device = job_device(snakemake.resources) or ("cuda" if torch.cuda.is_available() else "cpu")
processor, encoder = load_image_encoder(p.source, device=device)
start = time.perf_counter()
features, unreadable = image_features(processor, encoder, dataset)
log.info("%s: %d image feature vectors of %d dimensions from %s (%d unreadable images left out)", w.baseline,
         len(features), features.shape[1], p.source, len(unreadable))
log.info(throughput_line(len(features), time.perf_counter() - start, device))
table = baseline_probe_table(w.baseline, w.dataset, features, sample_rows(dataset, unreadable), list(p.targets),
                             seed=p.seed)
table.to_csv(snakemake.output[0], index=False, lineterminator="\n")
log.info("%d probes:\n%s", len(table), table[["target", "val_accuracy", "test_accuracy"]].round(3).to_string())
