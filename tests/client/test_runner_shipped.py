"""The package ships the platform's runner itself: `client/aimos_client/_runner.py` is a
link to `sandbox/runner.py`, and the build copies the file it points at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aimos_client.devrun

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "sandbox" / "runner.py"


def test_the_installed_runner_is_the_sandboxes_runner():
    assert aimos_client.devrun.RUNNER.read_bytes() == RUNNER.read_bytes()


def test_a_build_of_the_package_holds_the_runner_byte_for_byte(tmp_path):
    # build_py is the step of every wheel build that gathers the package's files; run from
    # the source folder with the setuptools of this venv, it needs no network.
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import setup; setup()",
            "-q",
            "build_py",
            "--build-lib",
            str(tmp_path),
        ],
        cwd=ROOT / "client",
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    shipped = tmp_path / "aimos_client" / "_runner.py"
    assert not shipped.is_symlink()
    assert shipped.read_bytes() == RUNNER.read_bytes()
    assert (tmp_path / "aimos_client" / "cli.py").is_file()
