"""Provenance: every run records the code's version and git commit, the library versions and the resolved config
(``<results>/provenance.json`` and a line per run in ``provenance.jsonl``), every extraction file carries the same
code identity in its attributes, and the version, LICENSE and CITATION.cff agree."""
from __future__ import annotations

import json
import subprocess

import h5py
import yaml

from difflens import __version__, provenance
from difflens.extract.h5io import get_attrs
from test_extraction import extracted

ROOT = provenance.ROOT


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_run_record_holds_commit_versions_and_config(tmp_path):
    config = {"results": str(tmp_path), "seed": 3, "models": {"shapes": {"kind": "shapes"}}}
    first = json.loads(provenance.write_run_record(tmp_path, config).read_text())
    assert first["config"] == config and first["difflens_version"] == __version__
    assert first["git_commit"].split("+")[0] == head_commit()
    assert first["versions"]["torch"] == "2.14.1" and set(provenance.LIBRARIES) <= set(first["versions"])
    provenance.write_run_record(tmp_path, {**config, "seed": 4})
    runs = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert [r["config"]["seed"] for r in runs] == [3, 4]  # one line per run, the latest in provenance.json
    assert json.loads((tmp_path / "provenance.json").read_text())["config"]["seed"] == 4


def test_commit_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    provenance.git_commit.cache_clear()
    try:
        assert provenance.git_commit() == "unknown"
    finally:
        provenance.git_commit.cache_clear()


def test_extraction_files_carry_the_code_identity(tmp_path_factory):
    files = sorted((extracted(tmp_path_factory) / "activations").rglob("*.h5"))
    assert files
    for path in files[:3]:
        with h5py.File(path) as f:
            attrs = get_attrs(f)
        assert attrs["difflens_version"] == __version__ and attrs["git_commit"].split("+")[0] == head_commit()


def test_version_license_and_citation_agree():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == __version__ and citation["cff-version"] == "1.2.0"
    titles = " ".join(r["title"] for r in citation["references"])
    assert "Revelio" in titles and "Information Decomposition" in titles
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
