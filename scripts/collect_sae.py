"""Rule collect_sae: every SAE summary of one (model, data set) as one table (one row per run, input, timestep,
layer) that the figure stage reads; ``auroc:<column>=<value>`` columns hold the best latent's AUROC for each
attribute value, and ``<control>_purity``, ``<control>_sigma_label``, ``<control>_best_auroc_max``,
``<control>_auroc:<column>=<value>`` (...) the same numbers of each control (untrained, random_directions)."""
import json

from difflens.runlog import start_log

log = start_log(snakemake.log[0])

import pandas as pd  # noqa: E402


def auroc_columns(best: dict, prefix: str = "") -> dict:
    """``<prefix>best_auroc_max`` and ``<prefix>auroc:<indicator>`` of a summary's best AUROC per indicator."""
    return {f"{prefix}best_auroc_max": max(best.values()) if best else float("nan"),
            **{f"{prefix}auroc:{name}": v for name, v in best.items()}}


rows = []
for path in snakemake.input:
    s = json.loads(open(path).read())
    flat = {k: v for k, v in s.items() if not isinstance(v, dict)}
    flat.update({f"random_{m}_{q}": v for m, qs in s["random"].items() for q, v in qs.items()})
    flat.update(auroc_columns(s["best_auroc"]))
    for control, numbers in s["controls"].items():
        flat.update({f"{control}_{k}": v for k, v in numbers.items() if k != "best_auroc"})
        flat.update(auroc_columns(numbers["best_auroc"], f"{control}_"))
    rows.append(flat)
table = pd.DataFrame(rows).sort_values(["run", "input", "layer", "timestep"], ignore_index=True)
table.to_csv(snakemake.output[0], index=False, lineterminator="\n")
log.info("%d SAE runs:\n%s", len(table), table.to_string(index=False))
