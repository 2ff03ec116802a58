"""The papers' numbers beside this run's, like for like.

``docs/paper_numbers.csv`` holds every number the summary page and the figures compare against, one row each with
its source (table, row, column) and how far it was checked (``verified``). A number of ours is set beside a paper's
only where the model (by its weights' hub id), the data set (by its source), the protocol (Caltech-101's split, the
sigma_label definition), the layer and the timestep match; elsewhere ``compare`` says which of them differs.
"""
from __future__ import annotations

from pathlib import Path

from ..models.catalog import UNET_ALIASES

#: the repository's table of the papers' numbers
NUMBERS = Path(__file__).resolve().parents[3] / "docs" / "paper_numbers.csv"
#: the papers' models by the hub ids of their weights
PAPER_MODELS = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
    "sd21": ("stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2-1"),
    "dit": ("facebook/DiT-XL-2-256", "facebook/DiT-XL-2-512"),
}
#: a paper row's protocol that any of ours matches (the paper does not say, or there is only one)
ANY_PROTOCOL = ("", "unstated", "paper", "official")
COLUMNS = ("paper_value", "paper_source", "paper_verified", "paper_differs")
#: how the public code made Kong et al.'s Table 4 edits (intervention.csv's columns; its ODE steps are the paper
#: rows' ``steps``): a paper number stands only beside edits made the same way
TABLE4_PROTOCOL = {"solver": "heun", "omit": "placeholder"}


def load_numbers(path: str | Path = NUMBERS):
    """The papers' numbers, every column as text except ``value`` (float) and ``timestep`` (nullable int)."""
    import pandas as pd  # here: the workflow imports this module for ``identities`` alone
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["value"] = table["value"].astype(float)
    table["timestep"] = pd.to_numeric(table["timestep"].replace("", None)).astype("Int64")
    return table


def paper_model(source: str) -> str:
    """The paper's short name of a model's weights (``sd15``), or "" for weights no paper used."""
    return next((name for name, ids in PAPER_MODELS.items() if str(source) in ids), "")


def identities(config: dict) -> dict:
    """What ``compare`` needs of a config, small enough for a rule's params: per model its source and paper name,
    per data set its source and protocol, and the sigma_label definition and split of the SAE analysis."""
    return {"models": {name: {"source": str(m.get("source", "")), "paper": paper_model(m.get("source", ""))}
                       for name, m in config.get("models", {}).items()},
            "datasets": {name: {"source": d.get("source", name),
                                "protocol": str(d.get("params", {}).get("protocol", ""))}
                         for name, d in config.get("datasets", {}).items()},
            "sigma": config.get("sae", {}).get("sigma", "sparse"), "split": config.get("sae", {}).get("split", "")}


def _layer(name) -> str:
    return UNET_ALIASES.get(str(name), str(name))


def _differs(rows, r: dict, ident: dict, sigma: bool):
    """(The paper rows (a DataFrame) that match our row ``r``, and, when none does, what differs: the first reason
    found.)"""
    import pandas as pd

    model = ident["models"].get(r["model"], {"source": "", "paper": ""})
    data = ident["datasets"].get(r["dataset"], {"source": r["dataset"], "protocol": ""})
    if rows.empty:
        return rows, "no paper number for this item in docs/paper_numbers.csv"
    papers = sorted(set(rows["model"]))
    rows = rows[rows["model"] == model["paper"]]
    if rows.empty:
        return rows, f"model {r['model']} ({model['source'] or 'no hub id'}) is not the paper's ({', '.join(papers)})"
    sets = sorted(set(rows["dataset"]))
    rows = rows[rows["dataset"] == data["source"]]
    if rows.empty:
        return rows, f"data set {r['dataset']} ({data['source']}) is not one the paper reports ({', '.join(sets)})"
    protocols = sorted(set(rows["protocol"]))
    rows = rows[rows["protocol"].isin(ANY_PROTOCOL) | (rows["protocol"] == data["protocol"])]
    if rows.empty:
        return rows, f"protocol {data['protocol'] or 'default'} (the paper's: {', '.join(protocols)})"
    if sigma and (r.get("sigma_definition", ident["sigma"]) != "public_code" or ident["split"] != "train"):
        return rows.iloc[:0], (f"sigma_label {r.get('sigma_definition', ident['sigma'])} on the {ident['split']} "
                               "split (the paper's: public_code on train)")
    layers = sorted(set(rows["layer"]) - {""})
    rows = rows[(rows["layer"] == "") | (rows["layer"] == _layer(r.get("layer", "")))]
    if rows.empty:
        return rows, f"layer {r.get('layer')} (the paper reports {', '.join(layers)})"
    steps = sorted({int(t) for t in rows["timestep"].dropna()})
    t = r.get("timestep")
    rows = rows[rows["timestep"].isna() | (rows["timestep"] == (int(t) if pd.notna(t) else -1))]
    return rows, "" if not rows.empty else f"timestep {t} (the paper reports {', '.join(map(str, steps))})"


def compare(table, numbers, ident: dict, paper: str, items, metric: str, ours: str):
    """``table`` (rows with model, dataset and, where they apply, layer, timestep, sigma_definition) with the
    ``COLUMNS`` added: the paper's ``metric`` value of ``items`` for the same model, data set, protocol, layer and
    timestep, its source and check, or, where none matches, ``paper_differs`` naming what differs. ``ours``: the
    column of ``table`` the paper's number stands beside (a paper value in % is set on its scale)."""
    import pandas as pd

    rows = numbers[(numbers["paper"] == paper) & numbers["item"].isin(list(items)) & (numbers["metric"] == metric)]
    out = {c: [] for c in COLUMNS}
    for r in table.to_dict("records"):
        match, why = _differs(rows, r, ident, metric == "sigma_label")
        best = match.iloc[0] if not match.empty else None
        scale = 0.01 if best is not None and best["unit"] == "%" and pd.notna(r.get(ours)) and r[ours] <= 1 else 1
        out["paper_value"].append(best["value"] * scale if best is not None else float("nan"))
        out["paper_source"].append(f"{best['source']}" if best is not None else "")
        out["paper_verified"].append(best["verified"] if best is not None else "")
        out["paper_differs"].append(why)
    return table.assign(**out)


def at_steps(rows, steps) -> tuple[object, str]:
    """(the paper rows of one quantity at the step count ``steps``, and, when none is, what differs): rows without
    a count (``steps`` "" or "any") match any; with counted rows, an unknown ``steps`` (None, NaN, "") matches
    none."""
    import pandas as pd

    counted = rows[~rows["steps"].isin(["", "any"])]
    if counted.empty:
        return rows, ""
    theirs = ", ".join(sorted(set(counted["steps"]), key=int))
    if steps is None or pd.isna(steps) or str(steps) == "":
        return rows.iloc[:0], f"step count unknown (the paper's: {theirs})"
    rows = rows[rows["steps"] == str(int(steps))]
    return rows, "" if len(rows) else f"{int(steps)} steps (the paper's: {theirs})"


def compare_keyed(table, numbers, ident: dict, key: str, steps: str | None = None, ours: str | None = None,
                  protocol: dict | None = None):
    """``table`` (rows with model and dataset) with the ``COLUMNS`` added from the paper rows whose ``summary_key``
    is the row's ``key`` column (Kong et al.'s tables: a key names the quantity and how it was computed), where the
    model's weights and the data set's source match (as ``compare`` matches them) and (``at_steps``, with
    ``steps`` the row's column of its draw or step count) the step count; elsewhere ``paper_differs`` names what
    differs. ``ours``: the column a paper value in % is scaled to; ``protocol``: {column: the paper's value}: a row
    whose column holds another value is not compared either (its ``paper_differs`` names the column)."""
    out = {c: [] for c in COLUMNS}
    for r in table.to_dict("records"):
        rows = numbers[numbers["summary_key"] == r.get(key, "")] if r.get(key) else numbers.iloc[:0]
        if rows.empty:
            why = "no paper number for this row"
        else:
            rows, why = _differs(rows, r, ident, False)
        if not why:
            rows, why = at_steps(rows, r.get(steps) if steps else None)
        for column, paper in (protocol or {}).items():
            if not why and str(r.get(column)) != str(paper):
                why = f"{column} {r.get(column)} (the paper's: {paper})"
        best = rows.iloc[0] if not why else None
        scale = 0.01 if best is not None and best["unit"] == "%" and (ours is None or r.get(ours, 1) <= 1) else 1
        out["paper_value"].append(best["value"] * scale if best is not None else float("nan"))
        out["paper_source"].append(best["source"] if best is not None else "")
        out["paper_verified"].append(best["verified"] if best is not None else "")
        out["paper_differs"].append(why)
    return table.assign(**out)


def summary_number(numbers, key: str, model_source: str, steps: int | None = None,
                   dataset_source: str | None = None) -> tuple[str, str]:
    """(the paper's numbers for a summary-page row ``key``, their source) where the model's weights are the paper's,
    the data set's source (when known) is one the paper reports for it and, for a row whose number depends on a step
    count (``steps``: draws or DDIM steps; the paper's ``steps`` column), the counts match; elsewhere ("-", what
    differs)."""
    rows = numbers[numbers["summary_key"] == key]
    if rows.empty:
        return "-", ""
    if paper_model(model_source) not in set(rows["model"]):
        papers = ", ".join(" / ".join(PAPER_MODELS[m]) if m in PAPER_MODELS else m for m in sorted(set(rows["model"])))
        return "-", f"differs: model {model_source or '(no hub id)'} is not the paper's ({papers})"
    if dataset_source and dataset_source not in set(rows["dataset"]):
        return "-", f"differs: data set {dataset_source} (the paper's: {', '.join(sorted(set(rows['dataset'])))})"
    if dataset_source:
        rows = rows[rows["dataset"] == dataset_source]
    if steps is not None:
        rows, why = at_steps(rows, steps)
        if why:
            return "-", f"differs: {why}"
    text = " / ".join(f"{v:g}{u} ({d}{', ' + n + ' steps' if n not in ('', 'any') else ''})"
                      for v, u, d, n in zip(rows["value"], rows["unit"], rows["dataset"], rows["steps"]))
    return text, "; ".join(sorted(set(f"{p.capitalize()} et al. {s}" if p == "kong" else s
                                       for p, s in zip(rows["paper"], rows["source"]))))
