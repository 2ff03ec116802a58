"""The classify stage's tables: linear probes over every layer x timestep x target, and the accuracy table (one row
per run: model, data set, layer, timestep, target, classifier, val and test accuracy, epochs, seconds, and the test
split's majority-class rate, the accuracy of always guessing its most common class) that the figure stage reads."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..extract.store import FeatureStore, target_columns

log = logging.getLogger(__name__)

ACCURACY_COLUMNS = ["model", "dataset", "layer", "timestep", "target", "classifier", "val_accuracy", "test_accuracy",
                    "epochs", "seconds", "n_train", "n_classes", "majority_accuracy"]
SPLITS = ("train", "val", "test")


def probe_targets(store: FeatureStore, model: str, dataset: str, layer: str, timestep: int,
                  targets: list[str]) -> list[str]:
    """The columns to probe: ``targets``, or (empty) label and every attribute column of the row table."""
    if targets:
        return list(targets)
    return target_columns(store.rows(model, dataset, layer, timestep).columns)


def split_codes(rows: dict, target: str) -> dict:
    """Split -> integer codes of column ``target`` of ``rows[split]``, coded once over the rows of every split
    together (``target_codes``), so that a value has the same code in every split; -1 where it is undefined."""
    from .sources import target_codes

    codes = target_codes(pd.concat([rows[s] for s in SPLITS], ignore_index=True), target)[0]
    ends = np.cumsum([len(rows[s]) for s in SPLITS])
    return dict(zip(SPLITS, np.split(codes, ends[:-1])))


def probe_split_rows(features: dict, rows: dict, targets: list[str], meta: dict, *, seed: int = 0) -> list[dict]:
    """A linear probe (``fit_probe``) of ``features[split]`` (n, d) for each target column of ``rows[split]`` (the
    row tables of the same samples, coded by ``split_codes``); one accuracy-table row each, starting from ``meta``
    (model, data set, layer, timestep). A target with one class in train or an empty split is left out with a
    warning."""
    from .diffc import majority_share
    from .probe import fit_probe

    out = []
    for target in targets:
        start = time.time()
        codes = split_codes(rows, target)
        keep = {s: codes[s] >= 0 for s in SPLITS}
        sizes = {s: int(keep[s].sum()) for s in SPLITS}
        if len(np.unique(codes["train"][keep["train"]])) < 2 or not all(sizes.values()):
            log.warning("%s: target %r has one class in train or an empty split (rows %s); no probe",
                        " ".join(str(v) for v in meta.values()), target, sizes)
            continue
        fit = fit_probe(*[a for s in SPLITS for a in (features[s][keep[s]], codes[s][keep[s]])], seed=seed)
        out.append({**meta, "target": target, "classifier": "linear_probe", "val_accuracy": fit["val_accuracy"],
                    "test_accuracy": fit["test_accuracy"], "epochs": 0, "seconds": round(time.time() - start, 2),
                    "n_train": fit["n_train"], "n_classes": fit["n_classes"],
                    "majority_accuracy": majority_share(codes["test"][keep["test"]])})
    return out


def probe_rows(store: FeatureStore, model: str, dataset: str, entries: list[tuple[int, str]], targets: list[str], *,
               seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Linear probes on the pooled vectors of every (timestep, layer) in ``entries`` for every target
    (``probe_split_rows``)."""
    from tqdm import tqdm

    out = []
    for t, layer in tqdm(entries, desc=f"probes {model}/{dataset}", disable=not progress, mininterval=5):
        feats = {s: store.pooled(model, dataset, layer, t, split=s).x for s in SPLITS}
        rows = {s: store.rows(model, dataset, layer, t, split=s) for s in SPLITS}
        meta = {"model": model, "dataset": dataset, "layer": layer, "timestep": int(t)}
        out += probe_split_rows(feats, rows, probe_targets(store, model, dataset, layer, t, targets), meta, seed=seed)
    return pd.DataFrame(out, columns=ACCURACY_COLUMNS)


def accuracy_table(probes: str | Path | None, diffc_results: list[str | Path],
                   baselines: list[str | Path] = ()) -> pd.DataFrame:
    """The probes' CSV, every Diff-C result JSON and the external baselines' CSVs (their timestep empty) as one
    accuracy table, sorted."""
    parts = [pd.read_csv(p) for p in ([probes] if probes else []) + list(baselines)]
    rows = []
    for path in diffc_results:
        r = json.loads(Path(path).read_text())
        rows.append({k: r[k] for k in ("model", "dataset", "layer", "timestep", "target", "val_accuracy",
                                       "test_accuracy", "epochs", "seconds", "n_train", "n_classes",
                                       "majority_accuracy")}
                    | {"classifier": "diffc"})
    parts.append(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))
    table = pd.concat([p for p in parts if not p.empty] or [pd.DataFrame(columns=ACCURACY_COLUMNS)],
                      ignore_index=True)
    table["timestep"] = table["timestep"].astype("Int64")
    return table[ACCURACY_COLUMNS].sort_values(["classifier", "target", "layer", "timestep"], ignore_index=True)
