"""The library's folders show the DAG: one package per stage, and no import that crosses the lines between them.

Stages in DAG order: data -> models -> train / check -> extract -> classify, sae, info -> report. Library code never
imports Snakemake or a rule script; models know nothing of data sets or storage; the analysis stages (classify, sae,
report) read features only through the store (``extract.store``, with the layout and the shared noise), never
through h5py or the extraction writers; the information stage needs nothing from extraction. Seeds come from
``seeding``, below every stage. The modules the Snakefile imports when it parses are pure Python.
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "scripts" / "difflens"
RULE_SCRIPTS = {p.stem for p in (ROOT / "scripts").glob("*.py")}
STORE = {"extract.store", "extract.layout", "extract.noise", "extract.prompts", "extract.capture"}
#: package -> the difflens packages (or modules) it may import besides itself
ALLOWED = {
    "seeding": set(),
    "provenance": set(),
    "data": {"seeding"},
    "models": {"seeding"},
    "train": {"data", "models", "seeding"},
    "check": {"data", "models", "info", "seeding"},
    "extract": {"data", "models", "seeding", "provenance"},
    "info": {"data", "models", "seeding"},
    "classify": {"data", "models", "seeding"} | STORE,
    "sae": {"data", "models", "seeding"} | STORE,
    "steer": {"data", "models", "info", "sae", "seeding", "extract.noise"},
    "report": {"data", "classify", "sae", "info", "seeding", "models.catalog"} | STORE,
    "config": {"models.catalog", "models.fetch", "data.registry", "extract.prompts"},
    "runlog": {"devices"},
    "devices": set(),
    "resources": set(),
}
#: third-party modules a package must not import
FORBIDDEN = {"models": {"h5py", "pandas"}, "info": {"h5py"}, "classify": {"h5py"}, "sae": {"h5py"},
             "report": {"h5py"}}
#: what the Snakefile imports when it parses: standard library, PyYAML and jsonschema only (envs/snakemake.yaml)
PARSE_TIME = ("config", "runlog", "seeding", "provenance", "resources", "data.registry", "models.catalog", "models.fetch",
              "extract.layout", "extract.prompts", "report.catalog", "report.paper", "info.memory", "sae.memory")
PARSE_TIME_OK = {"yaml", "jsonschema"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name (relative to difflens) -> file of every library module."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = path
    return out


def imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of a module, relative imports resolved to ``difflens.<...>``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(["difflens", *base, *([node.module] if node.module else [])])
                subs = [f"{mod}.{a.name}" for a in node.names] if not node.module else []
                out += [(node.lineno, m) for m in [mod, *subs]]
            else:
                out.append((node.lineno, node.module))
    return out


def allowed(owner: str, target: str) -> bool:
    """May module ``owner`` (dotted, relative to difflens) import difflens module ``target``?"""
    stage = owner.split(".")[0]
    if target == "" or target.split(".")[0] == stage:
        return True
    rules = ALLOWED.get(stage)
    if rules is None:
        return False
    return any(target == r or target.startswith(r + ".") for r in rules)


def crossings(root: Path = LIBRARY) -> list[str]:
    """Every import of the library that crosses a line, as 'file:line: what'."""
    found = []
    all_modules = modules(root)
    for name, path in all_modules.items():
        stage = name.split(".")[0]
        for line, mod in imports(name, path):
            where = f"{path.relative_to(root.parent)}:{line}"
            top = mod.split(".")[0]
            if top == "snakemake":
                found.append(f"{where}: imports Snakemake")
            elif top in RULE_SCRIPTS:
                found.append(f"{where}: imports the rule script {top}")
            elif top == "difflens":
                target = mod.split(".", 1)[1] if "." in mod else ""
                while target and target not in all_modules and "." in target:
                    target = target.rsplit(".", 1)[0]  # `from .x import name`: the module is x
                if name != "__init__" and not allowed(name, target):
                    found.append(f"{where}: {stage} imports difflens.{target}")
            elif top in FORBIDDEN.get(stage, ()):
                found.append(f"{where}: {stage} imports {top}")
        if name in PARSE_TIME:
            for line, mod in imports(name, path, top_level_only=True):
                top = mod.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PARSE_TIME_OK and top not in ("difflens",
                                                                                                    "__future__"):
                    found.append(f"{path.relative_to(root.parent)}:{line}: parse-time module imports {top}")
    return found


def test_every_stage_has_its_package():
    for stage in ("data", "models", "train", "check", "extract", "info", "classify", "sae", "report"):
        assert (LIBRARY / stage / "__init__.py").is_file(), stage
    assert not [p.name for p in LIBRARY.glob("*.py") if p.stem not in ("__init__", "config", "runlog", "seeding",
                                                                                "provenance", "resources", "devices")]


@pytest.mark.parametrize("name", sorted(modules(LIBRARY)))
def test_every_module_imports(name):
    importlib.import_module("difflens" if name == "__init__" else f"difflens.{name}")


def test_no_import_crosses_the_stage_lines():
    assert crossings() == []


def test_the_checker_catches_crossings(tmp_path):
    """Planted offenders in a copy of the library: each is reported, naming its file and line."""
    import shutil

    lib = tmp_path / "difflens"
    shutil.copytree(LIBRARY, lib, ignore=shutil.ignore_patterns("__pycache__"))
    (lib / "models" / "leak.py").write_text("from ..data.common import Dataset\nimport h5py\n")
    (lib / "sae" / "train.py").write_text("import h5py\nfrom ..extract.activations import extract_activations\n"
                                          "from ..extract.store import FeatureStore\n")
    (lib / "classify" / "rule.py").write_text("import snakemake\nimport extract_activations\n")
    (lib / "extract" / "layout.py").write_text((lib / "extract" / "layout.py").read_text() + "\nimport numpy\n")
    (lib / "info" / "seeds.py").write_text("from ..extract.noise import derive_seed\n")
    found = crossings(lib)
    expected = ["models/leak.py:1: models imports difflens.data.common", "models/leak.py:2: models imports h5py",
                "sae/train.py:1: sae imports h5py", "sae/train.py:2: sae imports difflens.extract.activations",
                "classify/rule.py:1: imports Snakemake",
                "classify/rule.py:2: imports the rule script extract_activations",
                "parse-time module imports numpy", "info/seeds.py:1: info imports difflens.extract.noise"]
    for item in expected:
        assert any(item in f for f in found), (item, found)
    assert len(found) == len(expected), found
