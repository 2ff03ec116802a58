"""Prompts of extraction: the prompt of one image is either the template with ``{label}`` replaced by its class
name, or, with the template ``clip`` (``CLIP_PROMPT``), the prompt a CLIP model chose for it from the class names
(``extract.clip_prompts``; the choices are a CSV per data set, read by ``read_chosen``). Pure Python, so the feature
reader and the workflow's config check use it without importing torch.

A template with ``{label}`` writes each image's true class into its features: classifiers read on them measure the
prompt (``uses_label``; config.check_label_prompt refuses it for classified data sets).
"""
from __future__ import annotations

import csv
from pathlib import Path

#: the class-name placeholder of a template
LABEL = "{label}"
#: the ``extraction.prompt`` value for a per-image prompt chosen by CLIP
CLIP_PROMPT = "clip"
#: columns of a data set's CLIP choices (one row per readable image)
CHOSEN_COLUMNS = ("sample_id", "class_name", "prompt", "similarity")


class PromptError(ValueError):
    """A prompt cannot be built for a row; the message names the row and where its prompt should come from."""


def uses_label(template: str) -> bool:
    """Whether the template puts each image's true class name into its prompt."""
    return LABEL in template


def format_prompt(template: str, label_name: str) -> str:
    """The prompt of one image: ``template`` with every ``{label}`` replaced by its class name."""
    if template == CLIP_PROMPT:
        raise PromptError("extraction.prompt clip: each image's prompt is CLIP's choice, not a template; build the "
                          "prompts with row_prompts and the data set's chosen prompts (read_chosen), or read them "
                          "back with FeatureStore.prompts")
    return template.replace(LABEL, str(label_name))


def row_prompts(template: str, sample_ids, label_names, chosen: dict[str, str] | None = None) -> list[str]:
    """The prompt of each row: ``chosen[sample id]`` with the template ``clip``, else ``format_prompt``."""
    if template != CLIP_PROMPT:
        return [format_prompt(template, name) for name in label_names]
    if chosen is None:
        raise PromptError("extraction.prompt clip needs the chosen prompt of each image (prompts/<data set>/"
                          "clip_prompts.csv, rule choose_clip_prompts); none were given")
    missing = [str(s) for s in sample_ids if s not in chosen]
    if missing:
        raise PromptError(f"extraction.prompt clip: no chosen prompt for {len(missing)} sample ids, e.g. "
                          f"{missing[:3]}; the CLIP choices were made for another version of the data set: rerun "
                          f"choose_clip_prompts")
    return [chosen[s] for s in sample_ids]


def write_chosen(rows: list[dict], path: str | Path) -> None:
    """The CLIP choices of a data set (dicts with ``CHOSEN_COLUMNS``) as a CSV, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, CHOSEN_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in CHOSEN_COLUMNS} for r in rows)
    tmp.replace(path)


def read_chosen(path: str | Path) -> dict[str, str]:
    """{sample id: chosen prompt} of a CSV that ``write_chosen`` wrote."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("sample_id", "prompt") if c not in (reader.fieldnames or [])]
        if missing:
            raise PromptError(f"{path}: no column(s) {missing}; expected {list(CHOSEN_COLUMNS)}")
        return {row["sample_id"]: row["prompt"] for row in reader}
