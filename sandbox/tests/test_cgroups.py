"""cgroup v2 for the process sandbox: a run's cgroup freezes, thaws and kills its processes;
`detect` names what is missing; the backend refuses to run without cgroups.

The v2 tests use the host's unified hierarchy: /sys/fs/cgroup itself, or the hybrid
/sys/fs/cgroup/unified next to cgroup v1 controllers (where only the core files work:
cgroup.procs, .freeze, .events, .kill — the limits need a host with v2 controllers)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import process_backend
from sandbox.base import SandboxUnavailable
from sandbox.confinement import (
    Cgroups,
    CgroupsUnavailable,
    CgroupsV2,
    Members,
    detect,
)
from sandbox.process_backend import ProcessBackend
from sandbox.tests.helpers import TEST_LIMITS, token

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are managed as root")

HYBRID = Path("/sys/fs/cgroup/unified")


def unified_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup"), HYBRID):
        if (root / "cgroup.controllers").exists():
            return root
    return None


def has_controllers(root: Path) -> bool:
    return set(CgroupsV2.CONTROLLERS) <= set((root / "cgroup.controllers").read_text().split())


@pytest.fixture
def v2_root() -> Path:
    root = unified_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy on this host")
    return root


@pytest.fixture
def run_cgroup(v2_root: Path) -> Iterator[CgroupsV2]:
    """A run's cgroup made by hand (no limits: those need the v2 controllers)."""
    cgroups = CgroupsV2(token(), root=v2_root)
    cgroups.path.mkdir(parents=True)
    yield cgroups
    Members(cgroups, None).kill()
    cgroups.remove()
    try:
        cgroups.path.parent.rmdir()  # only when no other run uses it
    except OSError:
        pass


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def until(condition, timeout: float = 5.0) -> bool:
    """Poll `condition` until it holds or `timeout` passes (the kernel updates asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_v2_cgroup_freezes_and_thaws_its_processes(run_cgroup, sleeper):
    (procs,) = run_cgroup.procs_files
    Path(procs).write_text(str(sleeper.pid))
    assert run_cgroup.pids() == [sleeper.pid]

    run_cgroup.freeze()
    assert run_cgroup.frozen()
    assert "frozen 1" in (run_cgroup.path / "cgroup.events").read_text()

    run_cgroup.thaw()
    assert until(lambda: not run_cgroup.frozen())
    assert sleeper.poll() is None
    assert run_cgroup.cpu_ms() >= 0  # cpu.stat's usage_usec is there without controllers


def test_killing_a_v2_cgroup_leaves_none_of_its_processes(run_cgroup, sleeper):
    Path(run_cgroup.procs_files[0]).write_text(str(sleeper.pid))
    Members(run_cgroup, None).kill()  # returns when none is left
    assert run_cgroup.pids() == []
    assert sleeper.wait(5) == -signal.SIGKILL
    run_cgroup.remove()
    assert not run_cgroup.path.exists()


def test_without_cgroup_kill_a_v2_cgroup_is_frozen_then_killed(run_cgroup, sleeper):
    Path(run_cgroup.procs_files[0]).write_text(str(sleeper.pid))
    Cgroups.kill(run_cgroup)  # the freeze, SIGKILL, thaw path of kernels before 5.14
    assert sleeper.wait(5) == -signal.SIGKILL
    assert until(lambda: run_cgroup.pids() == [])
    assert not run_cgroup.frozen()


def test_a_v2_cgroup_gets_the_run_limits(v2_root):
    if not has_controllers(v2_root):
        pytest.skip(f"{v2_root} has no memory, pids and cpu controllers")
    CgroupsV2.prepare(v2_root)
    cgroups = CgroupsV2(token(), root=v2_root)
    cgroups.create(TEST_LIMITS, helpers=2)
    try:
        memory = (TEST_LIMITS.memory_mb + TEST_LIMITS.workspace_mb) << 20
        assert (cgroups.path / "memory.max").read_text().strip() == str(memory)
        assert (cgroups.path / "pids.max").read_text().strip() == str(TEST_LIMITS.pids + 2)
        quota = int(TEST_LIMITS.cpus * 100_000)
        assert (cgroups.path / "cpu.max").read_text().split() == [str(quota), "100000"]
        if (cgroups.path / "memory.swap.max").exists():
            assert (cgroups.path / "memory.swap.max").read_text().strip() == "0"
        assert cgroups.cpu_ms() == 0
        assert not cgroups.oom_killed()
    finally:
        cgroups.remove()


def test_detect_names_the_missing_v2_controllers():
    if not HYBRID.is_dir() or has_controllers(HYBRID):
        pytest.skip("needs a cgroup v2 hierarchy without controllers")
    with pytest.raises(CgroupsUnavailable, match="lacks the memory, pids, cpu controller"):
        detect(HYBRID)


def test_detect_names_what_a_host_without_cgroups_lacks(tmp_path):
    with pytest.raises(CgroupsUnavailable) as missing:
        detect(tmp_path)
    assert "not a cgroup v2 hierarchy" in str(missing.value)
    assert "memory, pids, freezer, cpu, cpuacct" in str(missing.value)


@pytest.fixture
def no_cgroups(monkeypatch):
    def unavailable(root: Path = Path("/sys/fs/cgroup")) -> type[Cgroups]:
        raise CgroupsUnavailable(f"no usable cgroups under {root}")

    monkeypatch.setattr(process_backend, "detect", unavailable)


def test_without_cgroups_the_backend_refuses_naming_the_cause(tmp_path, no_cgroups):
    backend = ProcessBackend(tmp_path)
    with pytest.raises(SandboxUnavailable) as refused:
        backend.check()
    assert "cannot get cgroups" in str(refused.value)
    assert "no usable cgroups under /sys/fs/cgroup" in str(refused.value)
    assert "AIMOS_SANDBOX_ALLOW_UNISOLATED" in str(refused.value)


def test_without_cgroups_unisolated_runs_are_allowed_only_when_asked(tmp_path, no_cgroups, caplog):
    backend = ProcessBackend(tmp_path, allow_unisolated=True)
    with caplog.at_level(logging.WARNING, logger="aimos.sandbox"):
        backend.check()
    assert "WITHOUT isolation" in caplog.text
    assert "no usable cgroups" in caplog.text
    assert backend.cgroups is None
