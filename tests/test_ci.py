"""The CI entry point (`make test`, run by .ci/run) must fail when it tests nothing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_test_fails_when_pytest_collects_nothing(tmp_path):
    """pytest exits 5 when it collects no test (a wrong path, a broken collection filter):
    that run proved nothing, so `make test` must not pass it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text("#!/bin/sh\nexit 5\n")  # what `python -m pytest` returns when nothing is collected
    fake.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make skips the install
    result = subprocess.run(["make", "-s", "test", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""}, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
