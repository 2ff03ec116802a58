"""Run the real workflow as a subprocess (repository root, config file in a temp dir) and compare output trees.

Two runs "give the same outputs" when every file under ``results`` but the logs and benchmarks is equal: byte for
byte, except for the wall-clock facts a file may carry (``VOLATILE_KEYS`` in JSON files and HDF5 attributes) and
the results folder itself where a file names it. HDF5 files are compared by content (every dataset's dtype, shape
and bytes, every attribute), since the container bytes also hold its layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
#: keys whose values are wall-clock facts of one run, not results
VOLATILE_KEYS = frozenset({"created", "seconds", "train_seconds_this_run"})
#: folders under results whose files differ between any two runs (timings, timestamps)
RUN_RECORDS = ("logs", "benchmarks")
#: the files of a results folder that record a run rather than hold its output (difflens.provenance: the start time)
RUN_RECORD_FILES = ("provenance.json", "provenance.jsonl")


def write_config(tmp: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = Path(tmp) / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake_cmd(targets, configfile: Path, *options) -> list[str]:
    """The command line; ``--configfile`` takes several values, so it goes last."""
    return [*SNAKEMAKE, *options, *map(str, targets), "--configfile", str(configfile)]


def run(cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True):
    """Run a snakemake command line from the repository root; on failure, fail with the end of its output."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}\nexited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


@dataclass(frozen=True)
class PrintedJob:
    """One job (one attempt of it) as Snakemake printed it when it started the job."""

    rule: str
    jobid: str
    wildcards: str  # as printed, e.g. "model=shapes, dataset=other"; "" for none
    local: bool  # printed as a local rule: run by the Snakemake process itself, not submitted
    resources: dict


def printed_jobs(output: str) -> list[PrintedJob]:
    """Every job a Snakemake run (or dry run) printed, in order; a retried job once per attempt."""
    jobs = []
    for block in re.finditer(r"^(local)?(?:rule|checkpoint) (\w+):\n((?: {4}.*\n)*)", output, flags=re.M):
        fields = dict(re.findall(r"^ {4}(\w+): (.*)$", block[3], flags=re.M))
        resources = dict(kv.split("=", 1) for kv in fields["resources"].split(", ")) if "resources" in fields else {}
        jobs.append(PrintedJob(block[2], fields.get("jobid", ""), fields.get("wildcards", ""), bool(block[1]),
                               resources))
    return jobs


def _scrub(value, root: str):
    if isinstance(value, dict):
        return {k: _scrub(v, root) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_scrub(v, root) for v in value]
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return _scrub(json.loads(value), root)
            except ValueError:
                pass
        return value.replace(root, "<results>")
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _scrub(value.tolist(), root)
    return value


def _h5_digest(path: Path, root: str) -> str:
    import h5py

    h = hashlib.sha256()

    def add(name, obj):
        h.update(name.encode())
        h.update(json.dumps(_scrub(dict(obj.attrs), root), sort_keys=True, default=str).encode())
        if isinstance(obj, h5py.Dataset):
            data = obj[()]
            h.update(f"{obj.dtype}{obj.shape}".encode())
            h.update(json.dumps(_scrub(data, root)).encode() if data.dtype == object else data.tobytes())

    with h5py.File(path, "r") as f:
        add("/", f)
        f.visititems(add)
    return h.hexdigest()


def output_digests(results: Path) -> dict[str, str]:
    """{path relative to ``results``: digest of its content} for every output file (not logs or benchmarks)."""
    results = Path(results)
    root = str(results)
    out = {}
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        rel = path.relative_to(results).as_posix()
        if rel.split("/")[0] in RUN_RECORDS or rel in RUN_RECORD_FILES:
            continue
        if path.suffix == ".json":
            text = json.dumps(_scrub(json.loads(path.read_text()), root), sort_keys=True)
            out[rel] = hashlib.sha256(text.encode()).hexdigest()
        elif path.suffix == ".h5":
            out[rel] = _h5_digest(path, root)
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_same_digests(got: dict[str, str], want: dict[str, str], where: str = "the run",
                        reference: str = "the reference") -> None:
    """Two ``output_digests``: the same files, each with the same content."""
    assert got.keys() == want.keys(), (f"different files: only in {where}: {sorted(got.keys() - want.keys())}; "
                                       f"only in {reference}: {sorted(want.keys() - got.keys())}")
    differ = sorted(k for k in got if got[k] != want[k])
    assert not differ, f"{len(differ)} file(s) differ between {where} and {reference}: {differ[:10]}"


def assert_same_outputs(results: Path, reference: Path) -> None:
    assert_same_digests(output_digests(results), output_digests(reference), str(results), str(reference))
