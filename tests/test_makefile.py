"""The Makefile's ``test`` target (the README's test command, which .ci/run calls under ``set -e``) fails as pytest
does, also when pytest collects no tests."""
import shutil
import subprocess

import pytest

from workflow_utils import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_test_fails_when_pytest_collects_no_tests(tmp_path):
    """A stand-in venv whose python exits 5 (pytest's "no tests collected") and an up-to-date install stamp: make
    test exits non-zero (make's 2) after running it; ``-o browser`` leaves the Chromium install out."""
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.write_text("#!/bin/sh\necho \"stand-in pytest: $*\"\nexit 5\n")
    python.chmod(0o755)
    (tmp_path / "stamp").touch()
    proc = subprocess.run(["make", "-o", "browser", "test", f"VENV={tmp_path}", f"STAMP={tmp_path / 'stamp'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "stand-in pytest: -m pytest" in proc.stdout and proc.returncode == 2, proc.stdout + proc.stderr
