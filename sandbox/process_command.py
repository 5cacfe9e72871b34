"""The command line of a process-backend sandbox, from plain values (nothing is run here).

`SandboxCommand` turns the tools' paths, the run's limits, uid, directories, variables,
egress, the seccomp filter's fd and the cgroup files to join into the launcher's argv and
environment: `sh` (joins the cgroups) → `bwrap` (namespaces, binds, tmpfs, seccomp,
--clearenv) → `prlimit` → `setpriv` (the run's uid) → the program, behind `netbridge.py`
when the sandbox has the egress proxy. Unisolated, `env -i` replaces bwrap and setpriv.

A sandbox of a session (`session`) has the session's workspace bound read-write at
/workspace instead of the tmpfs, /tmp a tmpfs of its own, and the control directory at
/aimos/session: read-only for a task run, read-write for the session's own sandbox
(`daemon`), which also gets the daemon's source and has no CPU-seconds limit (it has no
timeout).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.base import Limits, SessionMount
from sandbox.confinement import MB
from sandbox.egress import PROXY_PORT, SOCKET_NAME, proxy_environment
from sandbox.protocol import RUNNER_PATH
from sandbox.session import AGENT_IN_SANDBOX, AGENT_PATH, CONTROL_IN_SANDBOX

NETBRIDGE_PATH = Path(__file__).with_name("netbridge.py")
WORKSPACE = "/workspace"
TMP = f"{WORKSPACE}/.tmp"  # /tmp is a link here, so both share the workspace's cap
SHM_MB = 16
LAUNCHER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Read-only pieces of /etc a Python program may need (names, DNS, TLS roots, time zone).
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "resolv.conf",
    "hosts",
    "host.conf",
    "gai.conf",
    "nsswitch.conf",
    "services",
    "protocols",
    "localtime",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "mime.types",
    "os-release",
    "debian_version",
)
_JOIN_CGROUPS = 'for f in $AIMOS_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done'


def namespace_args() -> list[str]:
    """Namespaces of every sandbox; the network one always (never the host's network, nor
    its abstract Unix sockets, which belong to the network namespace)."""
    return ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--unshare-net", "--die-with-parent", "--new-session"]  # fmt: skip


def system_links() -> tuple[str, ...]:
    """bwrap arguments for /bin, /lib, /lib64, /sbin as on this host (merged-/usr symlinks or
    read-only binds). Reads the host's filesystem."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return tuple(args)


def cpu_seconds(limits: Limits) -> tuple[int, int]:
    """RLIMIT_CPU (soft, hard) of a run: a backstop past its timeout, at its CPU share."""
    soft = math.ceil(limits.timeout_seconds * max(1.0, limits.cpus)) + 1
    return soft, soft + 2


def prlimit_args(
    prlimit: str, limits: Limits, *, per_uid: bool, cpu_runs: int | None = 1
) -> list[str]:
    """rlimits of every process of the run. RLIMIT_NPROC counts per real uid, so it is set
    only when the run has a uid of its own. The hard CPU limit covers `cpu_runs` runs (a
    reusable sandbox's runner moves the soft one for each run); None: no CPU-seconds limit
    (a session's sandbox, which has no timeout; its CPU share is the cgroup's)."""
    soft, hard = cpu_seconds(limits)
    cpu = "unlimited" if cpu_runs is None else f"{soft}:{hard * cpu_runs}"
    args = [
        prlimit,
        f"--data={limits.memory_mb * MB}",
        f"--fsize={limits.max_file_mb * MB}",
        f"--nofile={limits.max_open_files}",
        f"--cpu={cpu}",
        "--core=0",
    ]
    if per_uid:
        args.append(f"--nproc={limits.pids}")
    return args + ["--"]


@dataclass(frozen=True)
class SandboxCommand:
    """How one sandboxed program is started; `argv()` and `launcher_env()` are what to spawn.

    `tools`: absolute paths of sh, env, prlimit, setpriv, bwrap. `program`: the argv inside
    the sandbox. `venv`, `code`: the version's, at /env and /code (None: a session without
    a version has neither). `uid`: the run's own uid (None: the worker's). `egress`: the
    sandbox has the egress proxy's socket at /aimos/net (isolated only). `seccomp_fd`: the
    filter's BPF program, inherited by bwrap (required when isolated). `cgroup_procs`: the
    cgroup.procs files the launcher joins before anything else runs (None: no cgroups).
    `system_links`: from `system_links()`. `cpu_runs`: how many runs the hard CPU limit
    covers (a reusable sandbox's; None: no limit). `session`: the session whose workspace
    and control directory the sandbox gets (isolated only); `daemon`: it is the session's own
    sandbox, running its daemon.
    """

    tools: Mapping[str, str]
    program: tuple[str, ...]
    limits: Limits
    venv: Path | None
    code: Path | None
    run_dir: Path
    isolated: bool = True
    uid: int | None = None
    writable_env: bool = False
    egress: bool = False
    seccomp_fd: int | None = None
    cgroup_procs: tuple[str, ...] | None = None
    python_prefix: Path = Path("/usr")
    system_links: tuple[str, ...] = ()
    cpu_runs: int | None = 1
    session: SessionMount | None = None
    daemon: bool = False

    def __post_init__(self) -> None:
        if self.session is not None and not self.isolated:
            raise ValueError("a session's sandbox is always isolated")
        if self.daemon and self.session is None:
            raise ValueError("the daemon's sandbox needs its session")

    @property
    def workspace(self) -> Path:
        """The run's workspace on the host (unisolated runs write there)."""
        return self.run_dir / "workspace"

    @property
    def bridged(self) -> bool:
        return self.isolated and self.egress

    def variables(self) -> dict[str, str]:
        """The whole environment of the program (nothing of the worker's)."""
        path = "/usr/local/bin:/usr/bin:/bin"
        if self.venv is not None:
            path = f"{'/env' if self.isolated else self.venv}/bin:{path}"
        elif self.session is not None:
            path = f"{self.python_prefix}/bin:{path}"  # the daemon's own Python first
        variables = {
            "PATH": path,
            "HOME": WORKSPACE if self.isolated else str(self.workspace),
            "TMPDIR": "/tmp" if self.isolated else str(self.workspace),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.bridged:
            variables.update(proxy_environment())
        return variables

    def argv(self) -> list[str]:
        """The launcher's command line."""
        command = prlimit_args(
            self.tools["prlimit"], self.limits, per_uid=self.uid is not None, cpu_runs=self.cpu_runs
        )
        if self.uid is not None:
            command += [self.tools["setpriv"], f"--reuid={self.uid}", f"--regid={self.uid}",
                        "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                        "--no-new-privs", "--"]  # fmt: skip
        program = list(self.program)
        if self.bridged:
            program = [program[0], "-I", "-S", "/aimos/netbridge.py", f"/aimos/net/{SOCKET_NAME}",
                       str(PROXY_PORT), "--", *program]  # fmt: skip
        command += program
        variables = self.variables()
        if self.isolated:
            command = [*self._bwrap(variables), "--", *command]
        else:
            command = [self.tools["env"], "-i", *(f"{k}={v}" for k, v in variables.items()),
                       *command]  # fmt: skip
            if "setpriv" in self.tools:
                # A crashed worker takes its runs along (bwrap's --die-with-parent does it
                # for isolated runs).
                command = [self.tools["setpriv"], "--pdeathsig", "KILL", "--", *command]
        if self.cgroup_procs is not None:
            # The shell joins the cgroups, then becomes the sandbox: nothing forks outside.
            command = [self.tools["sh"], "-c", _JOIN_CGROUPS + '; exec "$@"', "sh", *command]
        return command

    def launcher_env(self) -> dict[str, str]:
        """The launcher's own environment (bwrap or `env -i` clears it for the program)."""
        env = {"PATH": LAUNCHER_PATH}
        if self.cgroup_procs is not None:
            env["AIMOS_CGROUP_PROCS"] = " ".join(self.cgroup_procs)
        return env

    def cwd(self) -> Path:
        return self.run_dir if self.isolated or self.code is None else self.code

    def _bwrap(self, variables: dict[str, str]) -> list[str]:
        if self.seccomp_fd is None:
            raise ValueError("an isolated sandbox needs its seccomp filter (seccomp_fd)")
        run_dir = self.run_dir
        args = [self.tools["bwrap"], *namespace_args()]
        args += ["--seccomp", str(self.seccomp_fd)]
        args += ["--hostname", "aimos"]
        args += ["--ro-bind", "/usr", "/usr", *self.system_links]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in ETC_FILES:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        args += ["--ro-bind", str(run_dir / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(run_dir / "group"), "/etc/group"]
        prefix = self.python_prefix
        if not prefix.is_relative_to("/usr"):
            # Its parents (e.g. /root) are created world-traversable, unlike on the host.
            for parent in reversed(prefix.parents[:-1]):
                args += ["--perms", "0755", "--dir", str(parent)]
            args += ["--ro-bind", str(prefix), str(prefix)]
        if self.venv is not None:
            args += ["--bind" if self.writable_env else "--ro-bind", str(self.venv), "/env"]
        if self.code is not None:
            args += ["--ro-bind", str(self.code), "/code"]
        args += ["--perms", "0755", "--dir", "/aimos"]
        args += ["--ro-bind", str(RUNNER_PATH), "/aimos/runner.py"]
        if self.bridged:
            args += ["--ro-bind", str(NETBRIDGE_PATH), "/aimos/netbridge.py"]
            args += ["--ro-bind", str(run_dir / "net"), "/aimos/net"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        tmp_bytes = str(self.limits.workspace_mb * MB)
        if self.session is None:
            # One filesystem, capped, for everything a run writes: the workspace, and /tmp in it.
            args += ["--perms", "1777", "--size", tmp_bytes, "--tmpfs", WORKSPACE]
            args += ["--perms", "1777", "--dir", TMP, "--symlink", TMP, "/tmp"]
        else:
            # The session's disk (capped by its own size), and /tmp capped apart.
            args += ["--bind", str(self.session.workspace), WORKSPACE]
            args += ["--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/tmp"]
            control = "--bind" if self.daemon else "--ro-bind"
            args += [control, str(self.session.control_dir), CONTROL_IN_SANDBOX]
            if self.daemon:
                args += ["--ro-bind", str(AGENT_PATH), AGENT_IN_SANDBOX]
        shm_mb = min(SHM_MB, self.limits.workspace_mb)
        args += ["--perms", "1777", "--size", str(shm_mb * MB), "--tmpfs", "/dev/shm"]
        chdir = WORKSPACE if self.daemon or self.code is None else "/code"
        args += ["--remount-ro", "/", "--chdir", chdir, "--clearenv"]
        for name, value in variables.items():
            args += ["--setenv", name, value]
        return args
