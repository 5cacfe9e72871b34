"""The `aimos` command run as a user runs it: the installed entry point, in a process of its
own, with AIMOS_URL / AIMOS_API_KEY and a home folder of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accounts.services import create_api_key

ROOT = Path(__file__).resolve().parents[2]
AIMOS = Path(sys.executable).parent / "aimos"


@dataclass
class Cli:
    """Runs `aimos …` in a subprocess; `env` is all the environment it gets."""

    env: dict[str, str]
    cwd: Path
    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 300):  # noqa: A002
        argv = [str(AIMOS), *map(str, args)]
        self.calls.append(argv)
        return subprocess.run(
            argv,
            env=self.env,
            cwd=self.cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def json(self, *args: str, code: int = 0) -> Any:
        """The JSON document `aimos … --json` prints, once it exited with `code`."""
        result = self(*args, "--json")
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen([str(AIMOS), *map(str, args)], env=self.env, cwd=self.cwd, **kwargs)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's environment: nothing of the test process's (no DATABASE_URL, no AIMOS_*),
    a home and config folder of its own, a wide terminal for tables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "COLUMNS": "200",
        **extra,
    }


@pytest.fixture(scope="session")
def aimos_command() -> Path:
    assert AIMOS.exists(), (
        f"{AIMOS} is missing: install the client into the venv with "
        f"`{sys.executable} -m pip install -e {ROOT / 'client'}` (make install does)"
    )
    return AIMOS


@pytest.fixture
def api_key(owner) -> str:
    return create_api_key(owner, name="client tests")[1]


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(live, api_key, home, tmp_path, aimos_command) -> Cli:
    """`aimos` against the live stack, logged in as `owner` through AIMOS_URL/AIMOS_API_KEY."""
    work = tmp_path / "work"
    work.mkdir()
    return Cli(cli_env(home, AIMOS_URL=live.url, AIMOS_API_KEY=api_key), work)


@pytest.fixture
def client(live, api_key):
    """The library, for what a test checks behind the command's back."""
    from aimos_client import Client

    with Client(live.url, api_key=api_key) as aimos:
        yield aimos
