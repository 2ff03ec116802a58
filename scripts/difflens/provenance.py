"""Where a result came from: difflens's version, the git commit of the checkout that made it, the versions of the
libraries that shape its numbers, and (for a run) the resolved config. Pure Python: the Snakefile imports it when it
parses, to write ``<results>/provenance.json`` at the start of every run (and a line of ``provenance.jsonl``, one
per run); the extraction files carry the same facts in their attributes."""
from __future__ import annotations

import functools
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

#: difflens's version (CITATION.cff says the same; a test checks)
__version__ = "0.1.0"
#: the checkout the library runs from (scripts/difflens -> the repository root)
ROOT = Path(__file__).resolve().parents[2]
#: the libraries whose versions shape the numbers (and the workflow engine)
LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "numpy", "h5py", "scipy", "pandas", "snakemake")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; ``unknown`` outside a git
    checkout (an exported copy) or without git."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if dirty else "")


def library_versions(names=LIBRARIES) -> dict[str, str]:
    """Python's version and each library's (``absent`` when not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_identity() -> dict:
    """The version and commit of the code that made a result."""
    return {"difflens_version": __version__, "git_commit": git_commit()}


def run_record(config: dict) -> dict:
    """What ``provenance.json`` holds for one run: the code's identity, the library versions, the resolved config
    and the start time."""
    return {**code_identity(), "versions": library_versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config}


def write_run_record(results: str | Path, config: dict) -> Path:
    """``<results>/provenance.json`` (this run) and one line appended to ``<results>/provenance.jsonl`` (every
    run in this results folder); returns the first."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    record = run_record(config)
    path = results / "provenance.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(path)
    with open(results / "provenance.jsonl", "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return path
