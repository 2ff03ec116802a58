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
    # train_shapes_model.py itself imports no third-party module: they come through difflens.train.shapes
    assert {"diffusers", "transformers", "tokenizers", "torch", "numpy"} <= third_party_imports(
        SCRIPTS / "train_shapes_model.py")
    thin = tmp_path / "env.yaml"
    thin.write_text("channels: [conda-forge]\ndependencies: [python=3.11, numpy]\n")
    assert "torch" not in env_packages(thin) and "numpy" in env_packages(thin)


def test_data_env_covers_the_converters_the_registry_loads():
    """The data rules reach the converter modules through the registry (importlib, by name), which the import
    scan above cannot follow: their imports (pycocotools for COCO masks, scipy for Flowers-102, ...) need data.yaml."""
    from difflens.data.registry import SOURCES

    have = env_packages(ROOT / "envs" / "data.yaml")
    modules = sorted({ref.module for pair in SOURCES.values() for ref in pair})
    needed = set().union(*(third_party_imports(SCRIPTS / "difflens" / "data" / f"{m}.py") for m in modules))
    assert "pycocotools" in needed
    missing = sorted(m for m in needed if PACKAGE_OF.get(m, m).lower() not in have)
    assert not missing, f"data.yaml lacks packages for imports {missing} of the converters {modules}"


# ---- the workflow parses in a plain Snakemake environment -----------------------------------------------------------
def _distribution_closure(names: list[str]) -> list:
    """Installed distributions of ``names`` and of everything they require (markers evaluated, no extras)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen, pending, out = set(), list(names), []
    while pending:
        key = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(key)
        except PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        out.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
    return out


def fresh_venv_with(env_file: Path, where: Path) -> Path:
    """A new venv (no pip, no system site-packages) whose site-packages holds links to exactly the installed files
    of the env's packages and their dependencies; returns its python."""
    import subprocess
    import sysconfig

    names = sorted(env_packages(env_file) - {"python", "pip"})
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for dist in _distribution_closure(names):
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (ours / top).exists() and not (site / top).exists():
                (site / top).symlink_to(ours / top)
    return python


def test_workflow_parses_in_the_snakemake_env_alone(tmp_path):
    """envs/snakemake.yaml is all a user's Snakemake needs: the default and the paper configs dry-run in a venv
    that holds only its packages (no numpy beyond pandas', no h5py, torch, tqdm or diffusers)."""
    import subprocess

    python = fresh_venv_with(ROOT / "envs" / "snakemake.yaml", tmp_path / "venv")
    probe = subprocess.run([python, "-c", "import snakemake, pandas, yaml, jsonschema\n"
                                          "for m in ('h5py', 'torch', 'tqdm', 'diffusers'):\n"
                                          "    try:\n        __import__(m)\n        print('HAS', m)\n"
                                          "    except ImportError:\n        pass"],
                           capture_output=True, text=True)
    assert probe.returncode == 0 and "HAS" not in probe.stdout, probe.stdout + probe.stderr
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results": str(tmp_path / "results")}))
    runs = {"config.yaml": ["--configfile", str(overlay)],
            "revelio.yaml": ["--configfile", str(ROOT / "configs" / "revelio.yaml"), "--replace-workflow-config"]}
    for name, args in runs.items():
        proc = subprocess.run([python, "-m", "snakemake", "-n", "--nolock", "--cores", "1", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                                "HOME": str(tmp_path)})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{name}:\n{out[-4000:]}"
        assert "prepare_dataset" in out, f"{name}:\n{out[-2000:]}"
