"""Every envs/*.yaml is a valid conda env that covers the third-party imports of the scripts that use it."""
import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
#: import name -> conda / PyPI package name, where they differ
PACKAGE_OF = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub", "sklearn": "scikit-learn"}
#: injected by Snakemake into rule scripts, not imported from an env package
PROVIDED = {"snakemake", "difflens"}
CONDA_SPEC = re.compile(r"^[A-Za-z0-9_.\-]+(\s*(==|=|>=|<=|>|<|!=)\s*[A-Za-z0-9_.*\-]+)?$")


def rule_envs_and_scripts():
    """(rule, env file, script file) for every rule with both a conda: and a script: directive."""
    found = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", smk.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            env = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
            script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", block)
            if name and script:
                assert env, f"rule {name.group(1)} in {smk.name} has a script but no conda env"
                found.append((name.group(1), (smk.parent / env.group(1)).resolve(),
                              (smk.parent / script.group(1)).resolve()))
    return found


def _module_file(module: str) -> Path | None:
    base = SCRIPTS.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party modules imported by a script and, transitively, by the difflens modules it uses."""
    seen, pending, out = set(), [script], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pkg = ".".join(path.relative_to(SCRIPTS).with_suffix("").parts)
        if path.name == "__init__.py":
            pkg += ".__init__"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = pkg.split(".")[: -node.level]
                    base = ".".join(parent + ([node.module] if node.module else []))
                    names = [base] + [f"{base}.{a.name}" for a in node.names]
                else:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "difflens":
                    f = _module_file(name)
                    if f:
                        pending.append(f)
                elif top and top not in sys.stdlib_module_names and top not in PROVIDED:
                    out.add(top)
    return out


def env_packages(env_file: Path) -> set[str]:
    env = yaml.safe_load(env_file.read_text())
    assert isinstance(env, dict) and isinstance(env.get("dependencies"), list), f"{env_file}: no dependencies list"
    assert isinstance(env.get("channels"), list) and env["channels"], f"{env_file}: no channels"
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{env_file}: only a pip: sub-list may be a mapping, got {dep}"
            for spec in dep["pip"]:
                assert CONDA_SPEC.match(spec), f"{env_file}: bad pip spec {spec!r}"
                names.add(re.split(r"[=<>!]", spec)[0].strip().lower())
        else:
            assert CONDA_SPEC.match(dep), f"{env_file}: bad conda spec {dep!r}"
            names.add(re.split(r"[=<>!]", dep)[0].strip().lower())
    assert "python" in names, f"{env_file}: pins no python"
    return names


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_files_are_valid_conda_envs(env_file):
    assert env_packages(env_file)


USES = rule_envs_and_scripts()


def test_every_rule_script_is_found():
    assert len(USES) >= 4 and all(script.is_file() and env.is_file() for _, env, script in USES)


@pytest.mark.parametrize("rule,env_file,script", USES, ids=[u[0] for u in USES])
def test_env_covers_script_imports(rule, env_file, script):
    have = env_packages(env_file)
    missing = sorted(m for m in third_party_imports(script) if PACKAGE_OF.get(m, m).lower() not in have)
    assert not missing, f"rule {rule}: {env_file.name} lacks packages for imports {missing} of {script.name}"


def test_import_scan_follows_the_library(tmp_path):
    # train_shapes_model.py itself imports no third-party module: they come through difflens.shapes_model
    assert {"diffusers", "transformers", "tokenizers", "torch", "numpy"} <= third_party_imports(
        SCRIPTS / "train_shapes_model.py")
    thin = tmp_path / "env.yaml"
    thin.write_text("channels: [conda-forge]\ndependencies: [python=3.11, numpy]\n")
    assert "torch" not in env_packages(thin) and "numpy" in env_packages(thin)
