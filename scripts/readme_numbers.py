"""Rewrite the README's demo numbers (the block between ``<!-- demo-numbers:begin -->`` and ``<!-- demo-numbers:end
-->``) from the outputs of ``make demo``; the rest of the README is left as it is. Not a rule: ``make readme-numbers``
runs it after ``make demo``.

    python scripts/readme_numbers.py [--results results] [--readme README.md] [--check]

``--check`` rewrites nothing and exits 1 when the README's block differs from what the results give.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from difflens.report.demo_numbers import BlockError, demo_block, replace_block  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--results", default="results", help="the demo's results folder (config.yaml's `results`)")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the block is out of date")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    try:
        text = readme.read_text()
        new = replace_block(text, demo_block(args.results, args.model, args.dataset))
    except (FileNotFoundError, BlockError) as exc:
        print(f"readme_numbers: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"readme_numbers: the demo numbers in {readme} differ from {args.results}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new)
    print(f"readme_numbers: {readme} {'rewritten' if new != text else 'already up to date'} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
