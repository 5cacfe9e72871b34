"""What only the process backend does: building venvs in the sandbox, uids, rlimits, cgroups,
and refusing (or loudly allowing) unisolated runs."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.base import BuildError, SandboxUnavailable, Status
from sandbox.confinement import UID_BASE, UID_SLOTS, detect
from sandbox.process_backend import ProcessBackend
from sandbox.tests.helpers import TEST_LIMITS, Recorded, processes_with, run_agent, token, wheel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the process sandbox runs as root")

PROBE = """
    import os
    import resource
    import subprocess
    import sys
    import time


    def handle(payload):
        import hello_aimos
        return hello_aimos.GREETING


    def limits(payload):
        names = ("RLIMIT_NPROC", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")
        return {name: resource.getrlimit(getattr(resource, name))[0] for name in names}


    def grow(payload):
        block = b"x" * (payload << 20)
        return len(block)


    def whoami(payload):
        return os.getuid()


    def nap(seconds):
        time.sleep(seconds)
        return "rested"


    def sleeper(marker, ctx):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
        ctx.delta("started")
        time.sleep(600)
"""


def write_wheel(folder: Path, name: str = "hello_aimos", greeting: str = "hi") -> str:
    """Write a wheel of module `name` (GREETING = greeting) into `folder`; its file name."""
    filename, data = wheel(name, "1.0", f"GREETING = {greeting!r}\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_bytes(data)
    return filename


def make_source(folder: Path) -> Path:
    (folder / "agent").mkdir(parents=True)
    (folder / "agent/__init__.py").write_text("")
    (folder / "agent/main.py").write_text(textwrap.dedent(PROBE))
    wheel = write_wheel(folder / "wheels")
    (folder / "requirements.txt").write_text(f"./wheels/{wheel}\n")
    return folder


@pytest.fixture
def source(tmp_path) -> Path:
    return make_source(tmp_path / "src")


@pytest.fixture(scope="module")
def probe_env(process_backend, tmp_path_factory):
    source = make_source(tmp_path_factory.mktemp("probe"))
    return process_backend.prepare(source, {"requirements": "requirements.txt"}, key="probe")


@pytest.mark.slow
def test_prepare_installs_the_requirements_for_the_agent(process_backend, source):
    lines: list[str] = []
    env = process_backend.prepare(source, {}, key="with-reqs", log=lines.append)
    assert any("Successfully installed hello-aimos" in line for line in lines), lines
    _, outcome = run_agent(process_backend, env, None)
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "hi")
    venv = Path(env.location) / "venv"
    # Installed as the build's uid, handed back to root: no later run can change it.
    assert {p.stat().st_uid for p in venv.rglob("*") if not p.is_symlink()} == {0}


def test_failing_requirements_raise_build_error_with_pips_output(process_backend, source):
    (source / "requirements.txt").write_text("./wheels/missing-1.0-py3-none-any.whl\n")
    with pytest.raises(BuildError) as failure:
        process_backend.prepare(source, {}, key="broken")
    assert "missing-1.0-py3-none-any.whl" in str(failure.value)
    assert not (process_backend.root / "envs/broken").exists()


def test_requirements_outside_the_package_are_refused(process_backend, source):
    with pytest.raises(BuildError, match="outside the package"):
        process_backend.prepare(source, {"requirements": "../../etc/passwd"}, key="outside")


def test_an_unavailable_runtime_is_a_build_error(process_backend, source):
    with pytest.raises(BuildError, match="runtime python2.7 is not available"):
        process_backend.prepare(source, {"runtime": "python2.7"}, key="old")


def test_invalid_environment_key_is_refused(process_backend, source):
    with pytest.raises(ValueError):
        process_backend.prepare(source, {}, key="../escape")


def test_rlimits_inside_the_sandbox(process_backend, probe_env):
    _, outcome = run_agent(process_backend, probe_env, None, entrypoint="agent.main:limits")
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == {
        "RLIMIT_NPROC": TEST_LIMITS.pids,
        "RLIMIT_DATA": TEST_LIMITS.memory_mb << 20,
        "RLIMIT_FSIZE": TEST_LIMITS.max_file_mb << 20,
        "RLIMIT_NOFILE": TEST_LIMITS.max_open_files,
        "RLIMIT_CORE": 0,
    }


def test_each_run_has_its_own_uid_and_releases_its_resources(process_backend, probe_env):
    runs = [
        process_backend.start(probe_env, "agent.main:whoami", None, limits=TEST_LIMITS)
        for _ in range(3)
    ]
    outcomes = [run.wait(30) for run in runs]
    uids = [outcome.output for outcome in outcomes]
    assert len(set(uids)) == 3
    assert all(UID_BASE <= uid < UID_BASE + UID_SLOTS for uid in uids)
    assert uids == [run.uid for run in runs]
    for run in runs:
        assert not run.run_dir.exists()
        cgroups = run.members.cgroups
        assert cgroups is not None and not any(path.exists() for path in cgroups.dirs.values())


def test_usage_is_measured(process_backend, probe_env):
    _, outcome = run_agent(process_backend, probe_env, 64, entrypoint="agent.main:grow")
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.peak_memory_mb >= 64
    assert outcome.cpu_ms > 0


@pytest.mark.slow
def test_paused_run_is_frozen_in_its_cgroup(process_backend, probe_env, tmp_path):
    run = process_backend.start(
        probe_env, "agent.main:grow", 1, limits=replace(TEST_LIMITS, timeout_seconds=30)
    )
    recorded = Recorded(run)
    run.pause()
    state = run.members.cgroups.dirs["freezer"] / "freezer.state"
    assert state.read_text().strip() == "FROZEN"
    run.resume()
    assert recorded.finish().status == Status.COMPLETED


@pytest.fixture
def path_without_bwrap(tmp_path, monkeypatch):
    """A PATH holding every tool the backend uses but bwrap."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("sh", "env", "prlimit", "setpriv", "true"):
        (folder / tool).symlink_to(f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(folder))


def test_without_bwrap_the_backend_refuses_clearly(tmp_path, path_without_bwrap):
    backend = ProcessBackend(tmp_path)
    with pytest.raises(SandboxUnavailable) as refused:
        backend.check()
    assert "bwrap is not installed" in str(refused.value)
    assert "AIMOS_SANDBOX_ALLOW_UNISOLATED" in str(refused.value)


def test_unisolated_runs_only_when_allowed_and_warn_loudly(
    tmp_path, path_without_bwrap, source, caplog
):
    backend = ProcessBackend(tmp_path, allow_unisolated=True)
    with caplog.at_level(logging.WARNING, logger="aimos.sandbox"):
        backend.check()
    assert "WITHOUT isolation" in caplog.text
    env = backend.prepare(source, {}, key="unisolated")
    _, outcome = run_agent(backend, env, None, entrypoint="agent.main:limits")
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output["RLIMIT_FSIZE"] == TEST_LIMITS.max_file_mb << 20
    assert outcome.output["RLIMIT_DATA"] == TEST_LIMITS.memory_mb << 20
    _, outcome = run_agent(backend, env, None, entrypoint="agent.main:handle")
    assert outcome.output == "hi"


def test_host_rlimits_are_untouched(process_backend, probe_env):
    before = resource.getrlimit(resource.RLIMIT_NPROC)
    run_agent(process_backend, probe_env, None, entrypoint="agent.main:limits")
    assert resource.getrlimit(resource.RLIMIT_NPROC) == before


def test_a_run_outlives_the_thread_that_started_it(process_backend, probe_env):
    runs = []

    def starter() -> None:
        runs.append(process_backend.start(probe_env, "agent.main:nap", 1.5, limits=TEST_LIMITS))
        time.sleep(0.5)  # the sandbox is up (and watching its parent) when this thread ends

    thread = threading.Thread(target=starter)
    thread.start()
    thread.join()
    outcome = runs[0].wait(30)
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "rested"), outcome


@pytest.mark.slow
def test_runs_die_with_the_process_that_started_them(process_backend, probe_env):
    marker = token()
    worker = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from sandbox.base import Environment, Limits
        from sandbox.process_backend import ProcessBackend

        backend = ProcessBackend(Path({str(process_backend.root)!r}))
        env = Environment("process", "probe", Path("."), {probe_env.location!r})
        run = backend.start(env, "agent.main:sleeper", {marker!r}, limits=Limits(600))
        next(iter(run.events()))
        print("started", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", worker], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert child.stdout.readline() == b"started\n"
    assert processes_with(marker) != []
    child.kill()
    child.wait()
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []
    # What the dead worker could not clean up goes at the next sweep.
    (swept,) = process_backend.sweep()
    assert not (process_backend.root / "runs" / swept).exists()
    assert not any(path.exists() for path in detect()(swept).dirs.values())
