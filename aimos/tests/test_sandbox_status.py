"""Whether this host can run the sandbox: the system status, the overview's banner, what the
launcher says at start, and `scripts/setup-system --sandbox process` (what `make run` runs).

Unavailable sandboxes are real ones: a Docker engine whose socket does not exist, a process
backend on a PATH without bwrap. System tools are faked only to see what the script calls.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator

from aimos import sandbox_status
from aimos.launcher import sandbox_notice
from sandbox.docker_backend import DockerBackend
from sandbox.process_backend import ProcessBackend

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup-system"
PROCESS_PACKAGES = ("bubblewrap", "util-linux", "libseccomp2")


@pytest.fixture(autouse=True)
def _fresh_probe():
    """Each test asks the backend itself, not an answer an earlier test left."""
    sandbox_status.forget()
    yield
    sandbox_status.forget()


@pytest.fixture
def no_docker_engine(settings, monkeypatch, tmp_path):
    """The docker sandbox configured, with DOCKER_HOST at a socket that does not exist."""
    socket = tmp_path / "docker.sock"
    settings.AIMOS_SANDBOX = "docker"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    return socket


@pytest.fixture
def path_without_bwrap(monkeypatch, tmp_path):
    """A PATH holding the shell tools a run needs, but no bwrap (nor setpriv)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "env", "prlimit"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


# --- GET system/status --------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_reports_the_process_sandbox_available_on_this_host(owner_api, settings):
    assert settings.AIMOS_SANDBOX == "process"

    body = owner_api.get("/api/v1/system/status").json()

    assert body["sandbox"] == {"backend": "process", "available": True, "reason": None, "fix": None}


@pytest.mark.django_db
def test_status_reports_an_unreachable_docker_engine_with_the_reason_and_the_fix(
    owner_api, no_docker_engine
):
    body = owner_api.get("/api/v1/system/status").json()

    assert body["sandbox"]["backend"] == "docker"
    reason = body["sandbox"]["reason"]
    assert body["sandbox"]["available"] is False
    assert f"the Docker engine at unix://{no_docker_engine} is not reachable" in reason
    assert body["sandbox"]["fix"] == "scripts/setup-system --sandbox docker"


@pytest.mark.django_db
def test_status_reports_a_process_sandbox_without_bwrap(
    owner_api, settings, tmp_path, path_without_bwrap
):
    settings.AIMOS_SANDBOX_ROOT = tmp_path / "sandbox"

    sandbox = owner_api.get("/api/v1/system/status").json()["sandbox"]

    assert sandbox["available"] is False
    assert "bwrap is not installed" in sandbox["reason"]
    assert sandbox["fix"] == "scripts/setup-system --sandbox process"


@pytest.mark.django_db
def test_an_unavailable_sandbox_leaves_the_rest_of_the_status_alone(owner_api, no_docker_engine):
    body = owner_api.get("/api/v1/system/status").json()

    assert body["sandbox"]["available"] is False
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"


def test_the_schema_describes_the_sandbox_of_the_status():
    schema = SchemaGenerator().get_schema(request=None, public=True)

    sandbox = schema["components"]["schemas"]["Sandbox"]
    assert set(sandbox["properties"]) == {"backend", "available", "reason", "fix"}
    status = schema["components"]["schemas"]["SystemStatus"]
    assert "sandbox" in status["required"]


# --- the dashboard's overview ------------------------------------------------------------------


@pytest.mark.django_db
def test_overview_warns_with_the_reason_and_the_fix_when_the_sandbox_is_unavailable(
    client, owner, no_docker_engine
):
    client.force_login(owner)

    body = client.get(reverse("overview")).content.decode()

    assert 'id="sandbox-warning"' in body
    assert "Sandbox unavailable (docker)" in body
    assert f"the Docker engine at unix://{no_docker_engine} is not reachable" in body
    assert '<code id="sandbox-fix">scripts/setup-system --sandbox docker</code>' in body


@pytest.mark.django_db
def test_overview_has_no_warning_when_the_sandbox_is_available(client, owner):
    client.force_login(owner)

    body = client.get(reverse("overview")).content.decode()

    assert 'id="system-status"' in body
    assert 'id="sandbox-warning"' not in body


# --- what the launcher says at start -----------------------------------------------------------


def test_launcher_names_the_missing_bwrap_and_the_command_that_installs_it(
    tmp_path, path_without_bwrap
):
    notice = sandbox_notice(ProcessBackend(root=tmp_path))

    assert notice is not None
    assert "bwrap is not installed" in notice
    assert "To fix it, run: scripts/setup-system --sandbox process" in notice


def test_launcher_names_the_unreachable_docker_engine_and_the_command_that_starts_it(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")

    notice = sandbox_notice(DockerBackend())

    assert notice is not None
    assert f"the Docker engine at unix://{tmp_path}/docker.sock is not reachable" in notice
    assert "To fix it, run: scripts/setup-system --sandbox docker" in notice


def test_launcher_checks_the_configured_sandbox_by_default(no_docker_engine):
    notice = sandbox_notice()

    assert notice is not None
    assert f"the Docker engine at unix://{no_docker_engine} is not reachable" in notice
    assert "To fix it, run: scripts/setup-system --sandbox docker" in notice


def test_launcher_says_nothing_when_the_sandbox_can_run(tmp_path):
    assert sandbox_notice(ProcessBackend(root=tmp_path)) is None


# --- scripts/setup-system --sandbox process ----------------------------------------------------


def fake_tools(bin_dir: Path, **scripts: str) -> dict:
    """An environment whose PATH finds the given shell scripts first, by name."""
    bin_dir.mkdir(exist_ok=True)
    bin_dir.chmod(0o755)
    for name, body in scripts.items():
        tool = bin_dir / name.replace("_", "-")
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def failing_apt_get(calls: Path) -> str:
    return f'echo "apt-get $*" >> {calls}; echo "apt-get must not run" >&2; exit 97'


def installed(package: str) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return status.stdout == "install ok installed"


def test_setup_for_the_process_sandbox_is_quick_and_fetches_nothing_when_all_is_installed(
    tmp_path,
):
    assert all(installed(package) for package in PROCESS_PACKAGES)
    calls = tmp_path / "calls"
    env = fake_tools(tmp_path / "bin", apt_get=failing_apt_get(calls))

    started = time.monotonic()
    done = subprocess.run(
        [SETUP, "--sandbox", "process"], env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 5
    assert not calls.exists()


def test_setup_installs_only_the_missing_package_of_the_process_sandbox(tmp_path):
    calls = tmp_path / "calls"
    env = fake_tools(
        tmp_path / "bin",
        # bubblewrap is missing, everything else is installed.
        dpkg_query='for a; do last="$a"; done\n'
        '[ "$last" = bubblewrap ] && exit 1\nprintf "install ok installed"',
        apt_get=f'echo "apt-get $*" >> {calls}',
    )

    done = subprocess.run(
        [SETUP, "--sandbox", "process"], env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "installing bubblewrap" in done.stdout
    assert calls.read_text().splitlines() == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends bubblewrap",
    ]


@pytest.mark.parametrize(
    ("flags", "returncode"), [(["--if-root"], 0), ([], 1)], ids=["if-root", "plain"]
)
def test_setup_without_root_leaves_the_host_alone_and_fails_only_when_not_told_if_root(
    flags, returncode
):
    # The fake tools must be reachable by `nobody` (pytest's tmp_path is root's alone).
    shared = Path(tempfile.mkdtemp(prefix="aimos-setup-"))
    shared.chmod(0o755)
    calls = shared / "calls"
    env = fake_tools(
        shared / "bin",
        dpkg_query="exit 1",  # nothing is installed
        apt_get=failing_apt_get(calls),
        sudo='echo "sudo: a password is required" >&2; exit 1',
    )

    try:
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             SETUP, "--sandbox", "process", *flags],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(shared)

    assert done.returncode == returncode, done.stderr
    assert not calls.exists()
    if returncode:
        assert "run as root" in done.stderr


def test_setup_refuses_an_unknown_sandbox():
    done = subprocess.run([SETUP, "--sandbox", "vm"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert "unknown sandbox 'vm'" in done.stderr


# --- make run -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sandbox", "expected"),
    [
        ("process", "scripts/setup-system --if-root --sandbox process \\"),
        ("docker", "scripts/setup-system --if-root --sandbox process --sandbox docker \\"),
    ],
)
def test_make_run_first_sets_up_the_configured_sandbox(sandbox, expected):
    env = {**os.environ, "AIMOS_SANDBOX": sandbox}

    planned = subprocess.run(
        ["make", "-n", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    setup = next(i for i, line in enumerate(lines) if line.startswith("scripts/setup-system"))
    launcher = next(i for i, line in enumerate(lines) if "-m aimos.launcher" in line)
    assert lines[setup].split() == expected.split()
    assert setup < launcher
