"""The process sandbox's command line, built from plain values: nothing is run here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.base import Limits
from sandbox.confinement import MB
from sandbox.egress import PROXY_PORT
from sandbox.process_command import SandboxCommand

TOOLS = {
    "sh": "/bin/sh",
    "env": "/usr/bin/env",
    "prlimit": "/usr/bin/prlimit",
    "setpriv": "/usr/bin/setpriv",
    "bwrap": "/usr/bin/bwrap",
}
PROGRAM = ("/env/bin/python", "-I", "-B", "/aimos/runner.py", "/code")
ISOLATED = SandboxCommand(
    tools=TOOLS,
    program=PROGRAM,
    limits=Limits(timeout_seconds=10, memory_mb=128, cpus=0.5, pids=32, workspace_mb=48),
    venv=Path("/srv/envs/k/venv"),
    code=Path("/srv/envs/k/code"),
    run_dir=Path("/srv/runs/r1"),
    uid=200_007,
    seccomp_fd=9,
    cgroup_procs=("/sys/fs/cgroup/pids/aimos/r1/cgroup.procs",),
)
UNISOLATED = replace(ISOLATED, isolated=False, uid=None, seccomp_fd=None, cgroup_procs=None)


def option(argv: list[str], name: str) -> str:
    """The value after the first `name` in argv."""
    return argv[argv.index(name) + 1]


def bwrap_part(argv: list[str]) -> list[str]:
    start = argv.index(TOOLS["bwrap"])
    return argv[start : argv.index("--", start)]


def test_an_isolated_sandbox_always_has_its_own_network_namespace():
    for egress in (False, True):
        argv = replace(ISOLATED, egress=egress).argv()
        assert "--unshare-net" in bwrap_part(argv)


def test_bwrap_loads_the_seccomp_filter_from_the_given_fd():
    assert option(bwrap_part(ISOLATED.argv()), "--seccomp") == "9"


def test_an_isolated_sandbox_needs_its_seccomp_filter():
    with pytest.raises(ValueError, match="seccomp"):
        replace(ISOLATED, seccomp_fd=None).argv()


def test_the_workspace_tmpfs_is_sized_by_the_limits_and_holds_tmp():
    bwrap = bwrap_part(ISOLATED.argv())
    tmpfs = bwrap.index("/workspace", bwrap.index("--tmpfs"))
    assert bwrap[tmpfs - 3 : tmpfs + 1] == ["--size", str(48 * MB), "--tmpfs", "/workspace"]
    symlink = bwrap.index("--symlink", bwrap.index("--dir", tmpfs))
    assert bwrap[symlink : symlink + 3] == ["--symlink", "/workspace/.tmp", "/tmp"]


def test_dev_shm_is_capped_by_the_workspace():
    bwrap = bwrap_part(replace(ISOLATED, limits=Limits(workspace_mb=4)).argv())
    shm = bwrap.index("/dev/shm")
    assert bwrap[shm - 3 : shm] == ["--size", str(4 * MB), "--tmpfs"]


def test_the_netbridge_and_proxy_variables_come_only_with_egress():
    closed = ISOLATED.argv()
    assert "/aimos/netbridge.py" not in closed
    assert "--setenv" in closed and "HTTPS_PROXY" not in closed

    opened = replace(ISOLATED, egress=True).argv()
    bridge = opened.index("/aimos/netbridge.py", opened.index(TOOLS["setpriv"]))
    assert opened[bridge - 3 : bridge] == ["/env/bin/python", "-I", "-S"]
    assert opened[bridge + 2 : bridge + 4] == [str(PROXY_PORT), "--"]
    assert opened[bridge + 4 :] == list(PROGRAM)
    bwrap = bwrap_part(opened)
    net = bwrap.index("/aimos/net")
    assert bwrap[net - 2 : net + 1] == ["--ro-bind", "/srv/runs/r1/net", "/aimos/net"]
    assert option(bwrap, "HTTPS_PROXY") == f"http://127.0.0.1:{PROXY_PORT}"


def test_egress_is_ignored_without_isolation():
    argv = replace(UNISOLATED, egress=True).argv()
    assert "/aimos/netbridge.py" not in argv
    assert not any(part.startswith("HTTPS_PROXY=") for part in argv)


def test_setpriv_switches_to_the_run_uid_without_capabilities():
    argv = ISOLATED.argv()
    setpriv = argv.index(TOOLS["setpriv"])
    assert argv[setpriv + 1 : setpriv + 8] == [
        "--reuid=200007",
        "--regid=200007",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
    assert argv[setpriv + 8 :] == list(PROGRAM)


def test_prlimit_values_come_from_the_limits():
    argv = ISOLATED.argv()
    start = argv.index(TOOLS["prlimit"])
    assert argv[start + 1 : argv.index("--", start)] == [
        f"--data={128 * MB}",
        f"--fsize={64 * MB}",
        "--nofile=256",
        "--cpu=11:13",  # ceil(10 s × max(1, 0.5 CPU)) + 1, and 2 s of grace to SIGKILL
        "--core=0",
        "--nproc=32",
    ]


def test_nproc_is_left_out_without_a_uid_of_the_run():
    argv = UNISOLATED.argv()
    assert not any(part.startswith("--nproc") for part in argv)


def test_the_launcher_joins_the_cgroups_first():
    argv = ISOLATED.argv()
    assert argv[:2] == [TOOLS["sh"], "-c"]
    assert argv[4] == TOOLS["bwrap"]
    env = ISOLATED.launcher_env()
    assert env["AIMOS_CGROUP_PROCS"] == "/sys/fs/cgroup/pids/aimos/r1/cgroup.procs"
    assert set(env) == {"PATH", "AIMOS_CGROUP_PROCS"}


def test_without_cgroups_the_launcher_is_bwrap_itself():
    argv = replace(ISOLATED, cgroup_procs=None).argv()
    assert argv[0] == TOOLS["bwrap"]
    assert set(replace(ISOLATED, cgroup_procs=None).launcher_env()) == {"PATH"}


def test_the_program_environment_is_cleared_and_set_explicitly():
    bwrap = bwrap_part(ISOLATED.argv())
    assert "--clearenv" in bwrap
    assert option(bwrap, "PATH") == "/env/bin:/usr/local/bin:/usr/bin:/bin"
    assert option(bwrap, "HOME") == "/workspace"


def test_the_venv_is_writable_only_for_builds():
    assert option(bwrap_part(ISOLATED.argv()), "/srv/envs/k/venv") == "/env"
    bwrap = bwrap_part(ISOLATED.argv())
    assert bwrap[bwrap.index("/srv/envs/k/venv") - 1] == "--ro-bind"
    build = bwrap_part(replace(ISOLATED, writable_env=True).argv())
    assert build[build.index("/srv/envs/k/venv") - 1] == "--bind"


def test_an_unisolated_run_gets_a_clean_environment_and_dies_with_the_worker():
    argv = UNISOLATED.argv()
    assert argv[:4] == [TOOLS["setpriv"], "--pdeathsig", "KILL", "--"]
    assert argv[4:6] == [TOOLS["env"], "-i"]
    assert "HOME=/srv/runs/r1/workspace" in argv
    assert TOOLS["bwrap"] not in argv
    assert UNISOLATED.cwd() == Path("/srv/envs/k/code")
    assert ISOLATED.cwd() == Path("/srv/runs/r1")
