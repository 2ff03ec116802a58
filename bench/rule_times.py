"""Per-rule cost of a Snakemake run from its benchmark files: ``<dir>/<rule>/<wildcards...>.tsv``, one per job.

Each file is Snakemake's ``benchmark:`` record (a header ``s  h:m:s  max_rss  ...`` and one row per repeat; ``-``
where a value was not collected). Prints a markdown table, one row per rule, most expensive first: jobs, summed and
largest job seconds, largest max RSS (MB), and the total.

    python bench/rule_times.py results/paper_smoke/benchmarks
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def read_benchmarks(folder: Path) -> pd.DataFrame:
    """One row per job: rule (the first folder under ``folder``, or the file's own name for a rule without
    wildcards; a per-model rule such as ``train_diffc_<model>`` files under its family's folder), s, max_rss (MB;
    NaN when not collected)."""
    files = sorted(folder.rglob("*.tsv"))
    if not files:
        raise ValueError(f"no benchmark files (*.tsv) under {folder}")
    rows = []
    for f in files:
        table = pd.read_csv(f, sep="\t", na_values="-")
        if "s" not in table or table.empty:
            raise ValueError(f"{f}: not a Snakemake benchmark file (no 's' column or no row)")
        rows.append({"rule": f.relative_to(folder).with_suffix("").parts[0], "s": float(table["s"].mean()),
                     "max_rss": float(table["max_rss"].max()) if "max_rss" in table else float("nan")})
    return pd.DataFrame(rows)


def rule_table(jobs: pd.DataFrame) -> str:
    """Markdown: per rule, jobs / total s / largest job s / largest max RSS, most expensive first, then the total."""
    per = jobs.groupby("rule").agg(jobs=("s", "size"), total=("s", "sum"), largest=("s", "max"),
                                   rss=("max_rss", "max")).sort_values("total", ascending=False)
    out = ["| rule | jobs | job seconds, summed | largest job, s | largest max RSS, MB |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for rule, r in per.iterrows():
        rss = "-" if pd.isna(r["rss"]) else f"{r['rss']:,.0f}"
        out.append(f"| {rule} | {r['jobs']:.0f} | {r['total']:,.1f} | {r['largest']:,.1f} | {rss} |")
    out.append(f"| **all** | {len(jobs)} | {jobs['s'].sum():,.1f} | {jobs['s'].max():,.1f} | |")
    return "\n".join(out)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="the run's benchmarks folder")
    args = ap.parse_args(argv)
    try:
        text = rule_table(read_benchmarks(args.folder))
    except ValueError as exc:
        sys.exit(str(exc))
    print(text)
    return text


if __name__ == "__main__":
    main()
