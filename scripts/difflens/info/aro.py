"""ARO-style caption choice scored by information (Kong et al.) and by the denoising error (DiffITM-style).

Every row of a data set's ``aro.csv`` is an item: a true caption and its negatives. Each candidate gets i^o (the
paper's score), i^s and the denoising error against the empty prompt, from draws shared by every candidate of the
image (an image's rows of several kinds run in one batch). An item counts as right for a score when the true caption
scores best (highest information, lowest error). A tie (the true caption scores exactly as well as its best negative:
a negative identical to the caption gets the very same score, as every prompt is scored once) is decided as the
public code decides it (``TIE_RULES``) and counted.

Per-item scores are written in shards (``score_shard``): a shard appends each finished image to a partial file (its
lines in one write) and a restarted job skips what that file holds, so a run stopped half-way resumes. The partial
file is resumed only with the settings it was started with (``records.check_partial``), and an image whose lines
a kill cut short is cut off it. ``aggregate`` turns the per-item table into accuracies (per kind, per group, macro
over groups as ARO reports them), without recomputing anything.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .estimators import LogSNRSampler, require_text, score_item
from .inputs import encode_samples, split_names
from .records import check_partial, remove_partial, shard_settings

log = logging.getLogger(__name__)

#: the scores, and whether higher is better
SCORES = {"i_o": True, "i_s": True, "err": False}
#: how a tie is counted: ``authors`` as Kong et al.'s evaluation (their copy of ARO's loaders lists the true caption
#: last, for the Order sets by reversing the options, and argmax takes the first maximum: a tie is wrong for every
#: kind); ``aro`` as ARO's own loaders (COCO/Flickr30k-Order list the true caption first: a tie of kind ``order`` is
#: right; VG-Relation / VG-Attribution list the false caption first: a tie of any other kind is wrong)
TIE_RULES = {"authors": (), "aro": ("order",)}
#: relations the ARO reference evaluation leaves out of the VG-Relation macro accuracy: the ``symmetric`` list of its
#: notebook "Replicate ARO! VG-Relation, VG-Attribution" (157 relations, in its order)
SYMMETRIC_RELATIONS = (
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of", "opening",
    "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of", "parked near",
    "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on", "playing with",
    "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to", "staring at",
    "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching", "traveling down",
    "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for", "walking across", "walking by",
    "walking down", "walking next to", "walking through", "working in", "working on", "worn on", "wrapped around",
    "wrapped in", "by", "of", "near", "next to", "with", "beside", "on the side of", "around")
ITEM_COLUMNS = ["sample_id", "item", "kind", "group", "candidate", "caption"]


def select_items(aro: pd.DataFrame, samples: pd.DataFrame, split: str, max_items: int, dataset: str) -> pd.DataFrame:
    """The aro.csv rows of ``split`` images (``all``: every image; the first ``max_items`` per kind, 0 = all), with
    an ``item`` number (the row's position in aro.csv, a stable key); raises naming the data set when none or a bad
    row is found."""
    if aro is None:
        raise ValueError(f"data set {dataset!r} has no aro.csv: it has no ARO items to score")
    rows = aro.assign(item=np.arange(len(aro)))
    rows = rows[rows["sample_id"].isin(set(samples.loc[samples["split"].isin(split_names(split)), "sample_id"]))]
    if max_items:
        rows = rows.groupby("kind", sort=False).head(max_items)
    if not len(rows):
        raise ValueError(f"data set {dataset!r}: no aro.csv rows on split {split!r}")
    for r in rows.itertuples():
        negatives = json.loads(r.negatives)
        if not str(r.caption).strip() or not negatives or not all(str(n).strip() for n in negatives):
            raise ValueError(f"data set {dataset!r}: aro.csv row {r.item} (sample {r.sample_id!r}) has an empty "
                             f"caption or negative: {r.caption!r} vs {negatives}")
    return rows


def shard_of(rows: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """The rows of the images whose rank (sorted sample ids) is ``shard`` modulo ``n_shards``."""
    images = sorted(rows["sample_id"].unique())
    mine = set(images[shard::n_shards])
    return rows[rows["sample_id"].isin(mine)]


def score_image_rows(model, x0: torch.Tensor, rows: pd.DataFrame, *, n_draws: int, sampler: LogSNRSampler,
                     seed: int, item, batch_size: int) -> pd.DataFrame:
    """One image's items (rows of aro.csv): every candidate caption's scores, one line per (item, candidate)."""
    cands = [(r, k, c) for r in rows.itertuples() for k, c in enumerate([r.caption, *json.loads(r.negatives)])]
    prompts = list(dict.fromkeys(c for _, _, c in cands))
    sc = score_item(model, x0, [(p, "") for p in prompts], n_draws=n_draws, sampler=sampler, seed=seed, item=item,
                    batch_size=batch_size)
    pos = {p: i for i, p in enumerate(prompts)}
    out = []
    for r, k, c in cands:
        line = {"sample_id": r.sample_id, "item": r.item, "kind": r.kind, "group": r.group, "candidate": k,
                "caption": c}
        for name in SCORES:
            line[f"{name}_nats"] = float(sc.mean(name)[pos[c]])
            line[f"{name}_se"] = float(sc.stderr(name)[pos[c]])
        out.append(line)
    return pd.DataFrame(out)


def candidate_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Lines of each image in a scores table: one per candidate (the caption and its negatives) of its items."""
    n = rows["negatives"].map(lambda v: 1 + len(json.loads(v)))
    return {str(k): int(v) for k, v in n.groupby(rows["sample_id"]).sum().items()}


def _record_ends(data: bytes) -> list[tuple[str, int]]:
    """(first field, byte offset just after it) of each complete CSV record of ``data``, header included: records
    whose last line ends with a newline and leaves no quoted field open."""
    lines_end = data.rfind(b"\n") + 1
    consumed = [0]

    def lines():
        for line in io.BytesIO(data[:lines_end]):
            consumed[0] += len(line)
            yield line.decode()

    out = []
    try:
        for fields in csv.reader(lines(), strict=True):
            out.append((fields[0] if fields else "", consumed[0]))
    except csv.Error:  # a quoted field open at the end: the last record is torn
        pass
    return out


def complete_length(data: bytes, counts: dict[str, int]) -> int:
    """The bytes of a partial scores file that hold its header and its complete images: images in runs of lines
    (one write each), an image complete with ``counts[sample_id]`` lines; the first incomplete one (a kill cut its
    write short, at a line's end or inside one) and all after it are not kept."""
    records = _record_ends(data)
    if not records:
        return 0
    keep = records[0][1]  # the header
    for sid, lines in itertools.groupby(records[1:], key=lambda r: r[0]):
        lines = list(lines)
        if len(lines) != counts.get(sid):
            break
        keep = lines[-1][1]
    return keep


def read_partial(partial: Path, counts: dict[str, int]) -> pd.DataFrame:
    """The complete images of a partial scores file (``complete_length``); a torn end is cut off the file with a
    warning naming it. An empty table when the file does not exist."""
    data = partial.read_bytes() if partial.is_file() else b""
    keep = complete_length(data, counts)
    if keep < len(data):
        log.warning("%s: dropping a torn end (bytes %d-%d: what a kill left of its last write)", partial, keep,
                    len(data))
        os.truncate(partial, keep)
    if not keep:
        return pd.DataFrame(columns=ITEM_COLUMNS)
    return pd.read_csv(io.BytesIO(data[:keep]), keep_default_na=False, dtype={"sample_id": str})


def append_lines(path: Path, table: pd.DataFrame) -> None:
    """Append ``table`` as CSV lines (a header first when ``path`` is empty or missing) in one write, flushed to
    disk."""
    header = not path.is_file() or not path.stat().st_size
    text = table.to_csv(index=False, header=header, lineterminator="\n")
    with open(path, "ab") as f:
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def score_shard(model, ds, rows: pd.DataFrame, out_path: str | Path, *, n_draws: int, sampler: LogSNRSampler,
                seed: int, batch_size: int = 256, progress: bool = True,
                identity: dict | None = None) -> pd.DataFrame:
    """Score every image of ``rows`` into ``out_path`` (CSV), image by image through ``<out_path>.partial``: a
    restarted job resumes from it when it was made with the same settings (``records.shard_settings``;
    ``identity``: what else the scores depend on, the job's ``records.job_identity``), and raises a ValueError
    naming both settings when not."""
    from tqdm import tqdm

    require_text(model, "ARO (caption choice)")
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    check_partial(partial, shard_settings(model, rows, n_draws=n_draws, sampler=sampler, seed=seed,
                                          identity=identity))
    counts = candidate_counts(rows)
    finished = set(read_partial(partial, counts)["sample_id"])
    if finished:
        log.info("resuming %s: %d images already scored", partial, len(finished))
    todo = [s for s in sorted(rows["sample_id"].unique()) if s not in finished]
    by_image = dict(tuple(rows.groupby("sample_id")))
    for sid in tqdm(todo, desc="ARO images", disable=not progress, mininterval=5):
        x0 = encode_samples(model, ds, [sid])[0]
        append_lines(partial, score_image_rows(model, x0, by_image[sid], n_draws=n_draws, sampler=sampler,
                                               seed=seed, item=sid, batch_size=batch_size))
    result = read_partial(partial, counts).sort_values(["item", "candidate"]).reset_index(drop=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    result.to_csv(tmp, index=False)
    os.replace(tmp, out_path)
    remove_partial(partial)
    return result


def item_outcomes(scores: pd.DataFrame, ties: str = "authors") -> pd.DataFrame:
    """One line per (item, score), items in order and scores in ``SCORES`` order: whether the true caption (the
    item's first candidate) won, its margin over the best negative (positive = right, in nats) and whether it tied
    (margin exactly 0), a tie counted right or wrong by the rule ``ties`` (``TIE_RULES``). Vectorised over the items
    (a table of ARO's ~83k items takes about a second and memory linear in its rows)."""
    if ties not in TIE_RULES:
        raise ValueError(f"infodecomp.aro.ties must be one of {list(TIE_RULES)}, got {ties!r}")
    s = scores.sort_values(["item", "candidate"], kind="stable")
    first = ~s["item"].duplicated()
    true, neg = s[first.to_numpy()].set_index("item"), s[(~first).to_numpy()]
    counts = s.groupby("item", sort=True).size()
    parts = []
    for name, higher in SCORES.items():
        col = f"{name}_nats"
        best = neg.groupby("item", sort=True)[col].max() if higher else neg.groupby("item", sort=True)[col].min()
        best = best.reindex(true.index)
        margin = ((true[col] - best) if higher else (best - true[col])).to_numpy(float)
        tie = margin == 0
        tie_wins = true["kind"].isin(TIE_RULES[ties]).to_numpy()
        parts.append(pd.DataFrame({"item": true.index, "sample_id": true["sample_id"].to_numpy(),
                                   "kind": true["kind"].to_numpy(), "group": true["group"].to_numpy(),
                                   "score": name, "n_candidates": counts.reindex(true.index).to_numpy(),
                                   "margin_nats": margin, "tie": tie, "correct": (margin > 0) | (tie & tie_wins)}))
    out = pd.concat(parts, ignore_index=True)
    order = np.lexsort((out["score"].map({n: i for i, n in enumerate(SCORES)}).to_numpy(), out["item"].to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def aggregate(outcomes: pd.DataFrame, *, min_group: int = 25,
              exclude_relations: tuple[str, ...] = SYMMETRIC_RELATIONS) -> pd.DataFrame:
    """Accuracy tables from ``item_outcomes``: one line per (kind, score, metric, group).

    Metrics: ``accuracy`` (all items; Precision@1 for kinds with several negatives), ``group`` accuracy per
    relation / attribute, and ``macro`` (mean of group accuracies): for kind relation without the symmetric
    relations, for kind attribute over groups with at least ``min_group`` items (ARO's reporting). ``n_ties``: the
    line's items whose true caption tied with its best negative (``item_outcomes``).
    """
    lines = []
    for (kind, score), g in outcomes.groupby(["kind", "score"], sort=True):
        lines.append({"kind": kind, "score": score, "metric": "accuracy", "group": "", "n": len(g),
                      "accuracy": float(g["correct"].mean()),
                      "stderr": float(g["correct"].std(ddof=1) / np.sqrt(len(g))) if len(g) > 1 else np.nan,
                      "n_ties": int(g["tie"].sum())})
        groups = g.groupby("group").agg(mean=("correct", "mean"), size=("correct", "size"), ties=("tie", "sum"))
        for name, row in groups.iterrows():
            lines.append({"kind": kind, "score": score, "metric": "group", "group": name, "n": int(row["size"]),
                          "accuracy": float(row["mean"]), "stderr": np.nan, "n_ties": int(row["ties"])})
        if kind == "relation":
            kept = groups[~groups.index.isin(exclude_relations)]
        elif kind == "attribute":
            kept = groups[groups["size"] >= min_group]
        else:
            kept = groups.iloc[:0]
        if len(kept):
            lines.append({"kind": kind, "score": score, "metric": "macro", "group": f"{len(kept)} groups",
                          "n": int(kept["size"].sum()), "accuracy": float(kept["mean"].mean()), "stderr": np.nan,
                          "n_ties": int(kept["ties"].sum())})
    return pd.DataFrame(lines)
