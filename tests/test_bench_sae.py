"""bench/sae.py, the k-SAE benchmark against sparsify and overcomplete: its smoke size runs, prints a table that
parses, difflens' numbers are finite and in range and seeded, and peers that do not import are skipped with the
reason (CI installs only requirements.txt; requirements-bench.txt adds the peers)."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import THREADS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "sae.py"
PEERS = ("sparsify", "overcomplete")
SETS = ("activations", "planted")


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_sae", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str, pythonpath: Path | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def table(out: str) -> dict:
    """{(data set, SAE): dict of numbers, or the skip reason (str)} from the printed table."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["data", "sae"])
    rows = {}
    for line in lines[header + 1:]:
        data, name, *rest = line.split(maxsplit=2) + [""]
        if rest[0].startswith("skipped:"):
            rows[data, name] = rest[0]
            continue
        rate, fvu, dead, cosine, seconds = rest[0].split()
        rows[data, name] = {"steps_per_s": float(rate), "fvu": float(fvu), "dead": float(dead.rstrip("%")) / 100,
                            "best_cos": None if cosine == "-" else float(cosine), "seconds": float(seconds)}
    return rows


@pytest.fixture(scope="module")
def importable() -> dict[str, bool]:
    """peer -> whether it imports here (asked in a subprocess, as the bench does, to keep them out of this one)."""
    code = (f"import sys; sys.path.insert(0, {str(BENCH.parent)!r}); import torch, sae_peers; "
            "print(sorted(name for name, why in sae_peers.available(torch.device('cpu')).items() if why is None))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    ok = done.stdout.strip().splitlines()[-1]
    return {peer: repr(peer) in ok for peer in PEERS}


@pytest.fixture(scope="module")
def smoke():
    return table(run_bench())


def test_smoke_run_prints_all_three_saes_for_both_data_sets(smoke):
    assert sorted(smoke) == sorted((data, name) for data in SETS for name in ("difflens", *PEERS))


@pytest.mark.parametrize("data", SETS)
def test_difflens_numbers_are_finite_and_in_range(smoke, data):
    ours = smoke[data, "difflens"]
    assert isinstance(ours, dict), ours
    assert math.isfinite(ours["steps_per_s"]) and ours["steps_per_s"] > 0
    timed_steps = bench_module().SIZES["smoke"][4]
    assert ours["seconds"] + 0.05 >= timed_steps / ours["steps_per_s"]  # the run's seconds include its timed steps
    assert 0 < ours["fvu"] < 1  # better than the held-out mean after 14 steps
    assert 0 <= ours["dead"] <= 1
    if data == "planted":
        assert 0 < ours["best_cos"] <= 1
    else:
        assert ours["best_cos"] is None  # no known atoms


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_runs_when_it_imports_and_is_skipped_with_the_reason_otherwise(smoke, importable, peer):
    rows = [smoke[data, peer] for data in SETS]
    if importable[peer]:
        assert all(isinstance(r, dict) and math.isfinite(r["fvu"]) and r["steps_per_s"] > 0 for r in rows), rows
    else:
        assert all(isinstance(r, str) and "requirements-bench.txt" in r for r in rows), rows


def test_hidden_peers_are_skipped_and_difflens_is_seeded(smoke, tmp_path):
    for peer in PEERS:  # modules that shadow the installed peers and fail to import, as on CI
        (tmp_path / f"{peer}.py").write_text("raise ImportError('hidden by the test')\n")
    rows = table(run_bench("--sets", "planted", pythonpath=tmp_path))
    assert sorted(rows) == [("planted", name) for name in sorted(("difflens", *PEERS))]
    for peer in PEERS:
        assert rows["planted", peer].startswith("skipped:") and "hidden by the test" in rows["planted", peer]
    again, first = rows["planted", "difflens"], smoke["planted", "difflens"]
    assert (again["fvu"], again["dead"], again["best_cos"]) == (first["fvu"], first["dead"], first["best_cos"])


def test_evaluation_scores_known_cases():
    bench = bench_module()
    torch.manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    shuffled = 3 * atoms[torch.randperm(8)]
    assert bench.mean_best_cosine(atoms, torch.cat([shuffled, torch.randn(4, 16)])) == pytest.approx(1.0)
    assert bench.mean_best_cosine(torch.eye(16)[:8], torch.eye(16)[8:]) == pytest.approx(0.0)

    class Fixed:  # reconstructs every vector as x (perfect) or as the set's mean, with latent 0 firing
        def __init__(self, perfect, mean):
            self.perfect, self.mean = perfect, mean

        def reconstruct(self, xb):
            fired = torch.zeros(5, dtype=torch.bool)
            fired[0] = True
            return (xb if self.perfect else self.mean.expand_as(xb)), fired

    x = torch.randn(100, 16) + 2
    assert bench.held_out_scores(Fixed(True, None), x, 5, 32) == (0.0, pytest.approx(0.8))
    assert bench.held_out_scores(Fixed(False, x.mean(0)), x, 5, 32)[0] == pytest.approx(1.0)


def test_planted_vectors_are_sums_of_known_atoms_around_an_offset():
    bench = bench_module()
    train, atoms = bench.planted(4096, 32, 64, 4, seed=0, device="cpu")
    held, atoms_again = bench.planted(4096, 32, 64, 4, seed=1, device="cpu")
    assert train.shape == (4096, 32) and atoms.shape == (64, 32) and torch.equal(atoms, atoms_again)
    assert not torch.equal(train, held)
    assert torch.allclose(atoms.norm(dim=1), torch.ones(64))
    # the same offset (norm 4) in both draws dominates their mean; the atoms' share of it is about 4 / sqrt(64)
    assert float((train.mean(0) - held.mean(0)).norm()) < 0.2 and 3 < float(train.mean(0).norm()) < 5
