"""The `process` backend: agents run under bubblewrap on this host, without a container engine.

A run is `sh` (joins the run's cgroup) → `bwrap` (new PID, network, IPC, UTS and cgroup
namespaces; a read-only view of /usr, a few /etc files, the Python install, the version's
venv at /env and code at /code; one size-capped tmpfs /workspace holding /tmp; a seccomp
filter; --clearenv) → `prlimit` (memory, processes, file size, open files, CPU seconds, no
core dumps) → `setpriv` (a dedicated unprivileged uid per run, no capabilities, NoNewPrivs)
→ the version's Python running `runner.py` (behind `netbridge.py` when the sandbox may reach
the network through the egress proxy: builds, and runs allowed the network). That command
line is built from plain values by `sandbox.process_command.SandboxCommand`; this module makes
what it names (run directory, uid lease, cgroups, proxy, seccomp fd) and starts it.

A warm sandbox (`warm`) is the same sandbox started before its run: the runner imports the
entrypoint and waits on stdin for the run's request (`sandbox.protocol.WarmStream`); a
reusable one (`warm_reusable`) serves runs one after another (`sandbox.protocol.ReusableStream`).

A session's sandbox (`start_session`, `ProcessSession`) is the same sandbox around the session
daemon instead of the runner, with no CPU-seconds limit, the session's workspace disk bound at
/workspace and /tmp a capped tmpfs of its own (see `sandbox.session`); a task run of a session
(`start(..., workspace=)`) is a cold run with that workspace. Both need isolation.

Every process of a run is found through its cgroup or its dedicated uid (`confinement`).
The PID namespace dies with its init, so a run's daemons die with the run; the launcher dies
with the worker process, so a crashed worker leaves no run going (`sweep()` then deletes
what it left on disk and in /sys/fs/cgroup).

Needs root, bwrap, libseccomp and cgroups (v1 or v2). Otherwise `check()` and `start()`
refuse with SandboxUnavailable naming the cause, unless AIMOS_SANDBOX_ALLOW_UNISOLATED is
set: then agents run as plain processes with rlimits only, and a loud warning is logged.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sandbox import seccomp
from sandbox.base import (
    Backend,
    BuildError,
    Environment,
    Inspection,
    Limits,
    LogSink,
    Run,
    SandboxError,
    SandboxUnavailable,
    SessionMount,
    SessionSandbox,
    SessionSpec,
    WarmSandbox,
)
from sandbox.confinement import (
    KILL_DEADLINE_S,
    MB,
    SPAWNER,
    UID_BASE,
    Cgroups,
    CgroupsUnavailable,
    Members,
    UidLease,
    detect,
    hold_lock,
    uid_range_problem,
)
from sandbox.egress import SOCKET_NAME, EgressPolicy, EgressProxy
from sandbox.limits import INSPECT_LIMITS
from sandbox.process_command import SandboxCommand, cpu_seconds, namespace_args, system_links
from sandbox.protocol import (
    RUNNER_PATH,
    ReusableStream,
    StreamRun,
    WarmStream,
    inspection_from,
    run_request,
    warm_request,
)
from sandbox.requirements import BuildRules, check_source_builds, requirements_file, tree_size
from sandbox.session import (
    READY_SECONDS,
    STOP_GRACE_SECONDS,
    DaemonOutput,
    check_mount,
    daemon_argv,
    give_control_dir,
    release_control_dir,
    remove_socket,
    seal_control_dir,
    seal_ready_control_dir,
)

logger = logging.getLogger("aimos.sandbox")

BUILD_LIMITS = Limits(
    timeout_seconds=900,
    memory_mb=2048,
    cpus=2.0,
    pids=256,
    max_file_mb=1024,
    max_open_files=1024,
    workspace_mb=1024,
)
BUILD_SIZE_EVERY_S = 0.5
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NEEDS_ISOLATION = (
    "sessions and their task runs need the isolated process sandbox (bubblewrap, root, "
    "cgroups, seccomp); it is unavailable here and unisolated runs are not offered to them"
)
Confined = TypeVar("Confined")


# --- a run -----------------------------------------------------------------------------------


class ProcessRun(StreamRun):
    """A run of the process backend (see `StreamRun` for what is guaranteed)."""

    def __init__(
        self,
        limits: Limits,
        proc: subprocess.Popen,
        members: Members,
        *,
        lease: UidLease | None,
        run_dir: Path,
        run_lock: int,
        proxy: EgressProxy | None = None,
    ) -> None:
        super().__init__(limits)
        self._run_lock = run_lock
        self._proxy = proxy
        self.proc = proc
        self.members = members
        self.uid = lease.uid if lease else None
        self.run_dir = run_dir
        self._lease = lease
        self._reaped = threading.Event()
        self._rusage = None
        self._stderr: deque[bytes] = deque(maxlen=64)
        threading.Thread(target=self._collect_stderr, name="run-stderr", daemon=True).start()

    def _collect_stderr(self) -> None:
        if self.proc.stderr is None:
            return
        for line in iter(lambda: self.proc.stderr.readline(4096), b""):
            self._stderr.append(line)

    def _freeze(self) -> None:
        self.members.freeze()

    def _thaw(self) -> None:
        self.members.thaw()

    def _kill_all(self) -> None:
        if not self._reaped.is_set():
            # The launcher first: until it has joined the cgroups they hold nothing of the run
            # (a warm sandbox may be discarded that early), and bwrap and its namespace init
            # run as root, outside the uid. Once it is dead nothing joins the cgroups any more.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.members.kill()
        self._reaped.wait(KILL_DEADLINE_S)

    def _exit_status(self) -> int | None:
        try:
            _, status, self._rusage = os.wait4(self.proc.pid, 0)
        except ChildProcessError:
            return self.proc.returncode
        finally:
            self._reaped.set()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode

    def _usage(self) -> tuple[float | None, int | None]:
        if self.members.cgroups is not None:
            return self.members.cgroups.peak_memory_mb(), self.members.cgroups.cpu_ms()
        if self._rusage is None:
            return None, None
        # Without cgroups: the largest single process and the CPU of everything reaped.
        return (
            self._rusage.ru_maxrss / 1024,
            int((self._rusage.ru_utime + self._rusage.ru_stime) * 1000),
        )

    def _oom_killed(self) -> bool:
        return self.members.cgroups is not None and self.members.cgroups.oom_killed()

    def _diagnostics(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")[-2000:]

    def _send(self, request: bytes, *, last: bool = True) -> None:
        threading.Thread(
            target=_feed, args=(self.proc, request), kwargs={"close": last}, daemon=True
        ).start()

    def _take_fields(self, limits: Limits) -> dict[str, Any]:
        """The run's own RLIMIT_CPU, which follows its timeout: the runner lowers the warm
        sandbox's to it (lowering needs no privilege, unlike a prlimit from this side)."""
        return {"cpu_seconds": list(cpu_seconds(limits))}

    def _release(self) -> None:
        _free(self.proc, self.members, self._proxy, self.run_dir, self._run_lock, self._lease)


class ProcessSession(SessionSandbox):
    """A session's sandbox on the process backend: the daemon under bubblewrap, a uid of its
    own, cgroups; it dies with the process that started it (`--die-with-parent`)."""

    def __init__(
        self,
        spec: SessionSpec,
        limits: Limits,
        proc: subprocess.Popen,
        members: Members,
        *,
        lease: UidLease | None,
        run_dir: Path,
        run_lock: int,
        proxy: EgressProxy | None = None,
    ) -> None:
        super().__init__(spec)
        self.limits = limits
        self.proc = proc
        self.members = members
        self.uid = lease.uid if lease else None
        self.run_dir = run_dir
        self._lease = lease
        self._run_lock = run_lock
        self._proxy = proxy
        self._reaped = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._paused = False
        self._usage: dict[str, Any] = {"peak_memory_mb": None, "cpu_ms": None}
        self._stderr: deque[bytes] = deque(maxlen=64)
        assert proc.stdout is not None
        self.output = DaemonOutput(proc.stdout)
        threading.Thread(target=self._collect_stderr, name="session-stderr", daemon=True).start()
        threading.Thread(target=self._reap, name="session-reaper", daemon=True).start()

    def _collect_stderr(self) -> None:
        if self.proc.stderr is None:
            return
        for line in iter(lambda: self.proc.stderr.readline(4096), b""):
            self._stderr.append(line)

    def _reap(self) -> None:
        try:
            _, status, _ = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
        finally:
            self._reaped.set()

    def diagnostics(self) -> str:
        """What the daemon and its launcher said on stderr (and stdout before `ready`)."""
        text = self.output.printed() + b"".join(self._stderr).decode("utf-8", "replace")
        return text.strip()[-2000:]

    def wait_ready(self, timeout: float = READY_SECONDS) -> None:
        """Returns once the daemon listens; SandboxError (saying why) when it ended first or
        did not say `ready` within `timeout`."""
        if self.output.wait_ready(timeout):
            return
        if self.output.ended.is_set() or not self.alive():
            raise SandboxError(f"the session's daemon ended as it started: {self.diagnostics()}")
        raise SandboxError(f"the session's daemon did not listen within {timeout:g} s")

    def alive(self) -> bool:
        return not self._reaped.is_set()

    def usage(self) -> dict[str, Any]:
        with self._stop_lock:
            if not self._stopped:
                self._sample()
            return dict(self._usage)

    def _sample(self) -> None:
        cgroups = self.members.cgroups
        if cgroups is None:
            return
        try:
            self._usage = {"peak_memory_mb": cgroups.peak_memory_mb(), "cpu_ms": cgroups.cpu_ms()}
        except (OSError, ValueError, KeyError):
            pass

    def pause(self) -> None:
        with self._stop_lock:
            if self._stopped or self._paused:
                return
            self.members.freeze()
            self._paused = True

    def resume(self) -> None:
        with self._stop_lock:
            if self._stopped or not self._paused:
                return
            self.members.thaw()
            self._paused = False

    def stop(self) -> None:
        """At stdin's EOF the daemon kills what it started and ends; whatever is left after
        STOP_GRACE_SECONDS (or does not end) is killed through the cgroups and the uid. Then
        the cgroups, uid, run directory and egress proxy are released. A paused sandbox is
        thawed first, so its daemon can end what it started."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                if self._paused:
                    self.members.thaw()
                    self._paused = False
                if self.proc.stdin is not None:
                    try:
                        self.proc.stdin.close()
                    except OSError:
                        pass
                self._reaped.wait(STOP_GRACE_SECONDS)
                self._sample()
                if not self._reaped.is_set():
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                self.members.kill()
                if not self._reaped.wait(KILL_DEADLINE_S):
                    raise SandboxError(f"the session sandbox {self.proc.pid} did not end")
            finally:
                _free(self.proc, self.members, self._proxy, self.run_dir, self._run_lock,
                      self._lease)  # fmt: skip
                remove_socket(self.spec.control_dir)
                seal_control_dir(self.spec.control_dir)
                release_control_dir(self.spec.control_dir)


# --- the backend -----------------------------------------------------------------------------


class ProcessBackend(Backend):
    """Runs agents under bubblewrap with a dedicated uid, rlimits and cgroups per run."""

    name = "process"

    def __init__(
        self,
        root: Path,
        *,
        allow_unisolated: bool = False,
        build: BuildRules | None = None,
        uid_base: int = UID_BASE,
    ) -> None:
        self.root = Path(root)
        self.allow_unisolated = allow_unisolated
        self.build = build or BuildRules()
        self.uid_base = uid_base
        # The kind of cgroups runs get here (found by `_problem`); None: runs get none.
        self.cgroups: type[Cgroups] | None = None
        self._isolated: bool | None = None
        self._lock = threading.Lock()
        self.tools: dict[str, str] = {}
        # The Python the venvs are made from, and the install they link to (bound read-only).
        self.python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self.python_prefix = Path(sys.base_prefix).resolve()

    # -- availability --

    def _find_tools(self) -> None:
        """Absolute paths of the programs a run is made of (PATH is looked up once, here)."""
        for tool in ("sh", "env", "prlimit", "setpriv", "bwrap"):
            path = shutil.which(tool)
            if path is not None:
                self.tools[tool] = path
        missing = [t for t in ("sh", "env", "prlimit") if t not in self.tools]
        if missing:
            raise SandboxUnavailable(
                f"the process sandbox needs {', '.join(missing)} (apt-get install util-linux)"
            )

    def _problem(self) -> str | None:
        """Why this host cannot isolate runs, or None when it can. Also finds the kind of
        cgroups runs get (`self.cgroups`; unisolated runs use them too)."""
        try:
            self.cgroups, no_cgroups = detect(), None
        except CgroupsUnavailable as exc:
            self.cgroups, no_cgroups = None, str(exc)
        for tool in ("bwrap", "setpriv"):
            if tool not in self.tools:
                return f"{tool} is not installed (apt-get install bubblewrap util-linux)"
        if os.geteuid() != 0:
            return (
                "the process sandbox must run as root, to give each run its own unprivileged "
                "uid and cgroups"
            )
        if no_cgroups is not None:
            return f"runs cannot get cgroups (memory, processes, CPU, freezing): {no_cgroups}"
        no_seccomp = seccomp.problem()
        if no_seccomp is not None:
            return f"runs cannot get their seccomp filter: {no_seccomp}"
        uids_taken = uid_range_problem(self.uid_base)
        if uids_taken is not None:
            return uids_taken
        program = seccomp.program_fd()
        try:
            probe = subprocess.run(
                [
                    self.tools["bwrap"],
                    *namespace_args(),
                    "--ro-bind",
                    "/usr",
                    "/usr",
                    *system_links(),
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--seccomp",
                    str(program),
                    "/usr/bin/true",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                pass_fds=(program,),
            )
        finally:
            os.close(program)
        if probe.returncode != 0:
            return (
                "bwrap cannot create namespaces or load the seccomp filter here: "
                f"{probe.stderr.strip()}"
            )
        return None

    def _check_isolation(self) -> bool:
        """True when runs are isolated; False (after a loud warning) when they may run
        unisolated: as the worker's own user with rlimits (and cgroups when available) only."""
        with self._lock:
            if self._isolated is None:
                self._find_tools()
                problem = self._problem()
                if problem is None:
                    self._isolated = True
                elif self.allow_unisolated:
                    logger.warning(
                        "AIMOS_SANDBOX_ALLOW_UNISOLATED is set and %s: agent code runs WITHOUT "
                        "isolation (rlimits only), as this process's user, with access to "
                        "this host's files and network. Never do this with code you do not "
                        "trust.",
                        problem,
                    )
                    self._isolated = False
                else:
                    raise SandboxUnavailable(
                        f"the process sandbox is unavailable: {problem}. Use "
                        "AIMOS_SANDBOX=docker, or set AIMOS_SANDBOX_ALLOW_UNISOLATED=1 to run "
                        "agents without isolation (rlimits only; unsafe)."
                    )
            return self._isolated

    def check(self) -> None:
        """Raise SandboxUnavailable unless runs can be isolated (or unisolated runs are allowed).
        Also clears what runs of a crashed worker left behind (see `sweep`)."""
        self._check_isolation()
        self.sweep()

    def availability(self) -> str | None:
        """None when runs can be isolated here (or unisolated runs are allowed), else why not.
        Sweeps nothing; a success is remembered by this instance, a failure is probed again."""
        try:
            self._check_isolation()
        except SandboxUnavailable as exc:
            return str(exc)
        return None

    def sweep(self) -> list[str]:
        """Kill and delete the runs under this root that nobody holds any more (their worker
        died: its lock on the run went with it). Returns their ids. Raises SandboxUnavailable
        as `check()` does."""
        self._check_isolation()  # finds self.cgroups
        swept = []
        runs = self.root / "runs"
        for run_dir in runs.iterdir() if runs.is_dir() else ():
            try:
                fd = hold_lock(run_dir / "lock", wait=False)
            except (BlockingIOError, FileNotFoundError, NotADirectoryError):
                continue  # a live run (or one still being made)
            try:
                cgroups = self.cgroups(run_dir.name) if self.cgroups is not None else None
                if cgroups is not None:
                    Members(cgroups, None).kill()
                    cgroups.remove()
                shutil.rmtree(run_dir, ignore_errors=True)
                swept.append(run_dir.name)
            finally:
                os.close(fd)
        return swept

    # -- environments --

    def prepare(
        self, source_dir: Path, manifest: dict[str, Any], *, key: str, log: LogSink | None = None
    ) -> Environment:
        """Build `<root>/envs/<key>/` = a venv with the requirements (pip runs in the sandbox,
        reaching only the package index through the egress proxy; wheels only unless source
        builds are allowed) and a copy of the code. Replaces a previous build of the same key.
        Raises BuildError with pip's output when installing fails, and when the environment
        would grow past the build rules' `max_mb`."""
        if not _KEY.match(key):
            raise ValueError(f"invalid environment key {key!r}")
        runtime = manifest.get("runtime")
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        if runtime not in (None, "python", "python3", version):
            raise BuildError(f"runtime {runtime} is not available here (this server has {version})")
        say = log or (lambda line: None)
        isolated = self._check_isolation()
        envs = self.root / "envs"
        envs.mkdir(parents=True, exist_ok=True)
        final = envs / key
        build = envs / f".{key}.{secrets.token_hex(4)}"
        try:
            build.mkdir()
            build.chmod(0o755)
            _copy_readable(Path(source_dir), build / "code")
            say(f"creating a Python {sys.version.split()[0]} environment")
            subprocess.run(
                [self.python, "-m", "venv", "--without-pip", str(build / "venv")],
                check=True,
                capture_output=True,
                text=True,
            )
            requirements = requirements_file(build / "code", manifest)
            if requirements is not None:
                check_source_builds(build / "code", requirements, self.build)
                self._install(build, requirements, say, isolated=isolated)
            self._check_size(build)
            if final.exists():
                shutil.rmtree(final)
            build.rename(final)
        except subprocess.CalledProcessError as exc:
            raise BuildError(f"creating the environment failed: {exc.stderr or exc}") from exc
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
        say("environment ready")
        return Environment(
            backend=self.name,
            key=key,
            source_dir=Path(source_dir),
            location=str(final),
            manifest=dict(manifest),
        )

    def _install(self, build: Path, requirements: str, say: LogSink, *, isolated: bool) -> None:
        """pip install -r inside the sandbox: a uid of its own, limits, the package index as
        its only destination (refusals go to the build log), killed when the environment
        grows past `max_mb` or the build takes longer than its timeout."""
        bundled = (self.python_prefix / "lib").glob("python3*/ensurepip/_bundled/pip-*.whl")
        wheel = next(bundled, None)
        if wheel is None:
            raise BuildError(f"no pip wheel bundled with the Python at {self.python_prefix}")
        rules = self.build
        say(f"installing {requirements}" + ("" if rules.allow_source else " (wheels only)"))
        venv = build / "venv"
        python = "/env/bin/python" if isolated else str(venv / "bin/python")
        pip = [python, str(wheel / "pip"), *rules.pip_install(requirements)]
        limits = replace(BUILD_LIMITS, timeout_seconds=rules.timeout_seconds)
        egress = EgressPolicy.for_build(rules.index_hosts).with_host_addresses()
        run = self._spawn(
            venv, build / "code", pip, limits=limits, isolated=isolated, writable_env=True,
            egress=egress, on_refusal=lambda text: say(f"network: {text}"),
            stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output: deque[str] = deque(maxlen=200)
        stop = threading.Event()
        why: list[str] = []

        def watch() -> None:
            """Kill pip at the deadline or when the environment grows past the cap."""
            deadline = time.monotonic() + limits.timeout_seconds
            while not stop.wait(BUILD_SIZE_EVERY_S):
                if time.monotonic() > deadline:
                    seconds = limits.timeout_seconds
                    why.append(f"installing requirements took longer than {seconds:g} s")
                elif tree_size(build) > rules.max_mb * MB:
                    why.append(self._too_large(rules))
                else:
                    continue
                run.members.kill()
                return

        watcher = threading.Thread(target=watch, name="build-watch", daemon=True)
        watcher.start()
        try:
            assert run.proc.stdout is not None
            for raw in iter(lambda: run.proc.stdout.readline(65536), b""):
                line = raw.decode("utf-8", "replace").rstrip()
                output.append(line)
                say(line)
            code = run._exit_status()
        finally:
            stop.set()
            watcher.join()
            run.members.kill()  # anything pip left behind
            if run.proc.returncode is None:
                run._exit_status()
            run._release()
            if os.geteuid() == 0:
                _chown_tree(venv, 0)
        if why:
            say(why[0])
            raise BuildError(why[0])
        if code != 0:
            hint = "" if rules.allow_source else " (this server installs wheels only)"
            raise BuildError(
                f"pip install -r {requirements} failed (exit code {code}){hint}:\n"
                + "\n".join(output)
            )

    def _check_size(self, build: Path) -> None:
        if tree_size(build) > self.build.max_mb * MB:
            raise BuildError(self._too_large(self.build))

    @staticmethod
    def _too_large(rules: BuildRules) -> str:
        return (
            f"the environment grew past AIMOS_BUILD_MAX_MB ({rules.max_mb} MB); "
            "the build was stopped"
        )

    def remove(self, env: Environment) -> None:
        """Delete the environment's directory (nothing else is shared)."""
        location = Path(env.location)
        if location.parent != self.root / "envs":
            raise ValueError(f"{location} is not an environment of this backend")
        shutil.rmtree(location, ignore_errors=True)

    # -- runs --

    def inspect(self, env: Environment, entrypoint: str) -> Inspection:
        """Import the entrypoint inside the sandbox (its import-time code runs there)."""
        request = run_request(env, entrypoint, mode="inspect")
        run = self._start(env, request, INSPECT_LIMITS)
        return inspection_from(run.wait())

    def start(
        self,
        env: Environment,
        entrypoint: str,
        payload: Any,
        *,
        state: Any = None,
        limits: Limits,
        env_vars: dict[str, str] | None = None,
        run_id: str | None = None,
        workspace: SessionMount | None = None,
    ) -> Run:
        """Start a run. The manifest's `env` and `env_vars` reach the agent through the
        runner's stdin (never a command line); nothing else of this host's environment does.
        Its sandbox dies with the process that started it (`--die-with-parent` and the PID
        namespace), so `kill_run` has nothing to do. With `workspace`: a session's task run
        (see `Backend.start`); SandboxUnavailable when runs are not isolated here."""
        request = run_request(env, entrypoint, payload, state=state, env_vars=env_vars)
        return self._start(env, request, limits, session=workspace)

    def start_session(self, spec: SessionSpec) -> SessionSandbox:
        """The session's sandbox (see `Backend.start_session`), its daemon listening. The
        control directory is the sandbox user's only until the daemon has made its socket,
        then root's again, so nothing in the sandbox can put files there."""
        if not self._check_isolation():
            raise SandboxUnavailable(_NEEDS_ISOLATION)
        mount = check_mount(spec.mount)
        venv = code = None
        python = self.python
        if spec.env is not None:
            location = Path(spec.env.location)
            if not (location / "venv").is_dir():
                raise SandboxError(f"environment {spec.env.key} is not built")
            venv, code, python = location / "venv", location / "code", "/env/bin/python"
        egress = EgressPolicy.for_run().with_host_addresses() if spec.limits.network else None
        try:
            session = self._spawn(
                venv, code, daemon_argv(python, spec.limits), limits=spec.limits, isolated=True,
                egress=egress, cpu_runs=None, session=mount, daemon=True,
                wrap=partial(ProcessSession, replace(spec, workspace=mount.workspace,
                                                     control_dir=mount.control_dir)),
            )  # fmt: skip
        except BaseException:
            seal_control_dir(mount.control_dir)
            release_control_dir(mount.control_dir)
            raise
        try:
            session.wait_ready()
            seal_ready_control_dir(mount.control_dir)
        except BaseException:
            session.stop()
            raise
        return session

    def warm(self, env: Environment, entrypoint: str, *, limits: Limits) -> WarmSandbox:
        """The sandbox `start` would start, started now: its runner imports `entrypoint` with
        the manifest's `env` set, then waits for the run's request (see `WarmSandbox`)."""
        run = self._start(env, warm_request(env, entrypoint), limits, warm=True)
        return WarmStream(run, env, entrypoint, limits)

    def warm_reusable(
        self, env: Environment, entrypoint: str, *, limits: Limits, max_runs: int
    ) -> WarmSandbox:
        """`warm`'s sandbox serving up to `max_runs` runs one after another (see
        `ReusableStream`). Its hard RLIMIT_CPU covers `max_runs` runs; each run gets its own
        soft limit from the CPU used before it. Unisolated, it serves one run: without a PID
        namespace of its own, the runner could not tell a run's leftovers from this host's
        processes."""
        if not self._check_isolation():
            return self.warm(env, entrypoint, limits=limits)
        hard = cpu_seconds(limits)[1]
        run = self._launch(env, limits, cpu_runs=max_runs)
        sandbox = ReusableStream(run, run.proc.stdout, env, entrypoint, limits, max_runs=max_runs)  # type: ignore[arg-type]
        _feed(run.proc, warm_request(env, entrypoint, run_cpu_seconds=hard), close=False)
        return sandbox

    def _start(
        self,
        env: Environment,
        request: bytes,
        limits: Limits,
        *,
        warm: bool = False,
        session: SessionMount | None = None,
    ) -> ProcessRun:
        run = self._launch(env, limits, session=session)
        run._begin(run.proc.stdout, warm=warm)
        if warm:
            _feed(run.proc, request, close=False)  # a small line; the run's request follows
        else:
            run._send(request)
        return run

    def _launch(
        self,
        env: Environment,
        limits: Limits,
        *,
        cpu_runs: int = 1,
        session: SessionMount | None = None,
    ) -> ProcessRun:
        """The runner of `env`, confined, not yet begun (`cpu_runs`, `session`: see
        `SandboxCommand`)."""
        isolated = self._check_isolation()
        if session is not None:
            if not isolated:
                raise SandboxUnavailable(_NEEDS_ISOLATION)
            session = check_mount(session)
        location = Path(env.location)
        if not (location / "venv").is_dir():
            raise SandboxError(f"environment {env.key} is not built (no {location / 'venv'})")
        if isolated:
            argv = ["/env/bin/python", "-I", "-B", "/aimos/runner.py", "/code"]
        else:
            argv = [str(location / "venv/bin/python"), "-I", "-B", str(RUNNER_PATH),
                    str(location / "code")]  # fmt: skip
        egress = EgressPolicy.for_run().with_host_addresses() if limits.network else None
        return self._spawn(location / "venv", location / "code", argv, limits=limits,
                           isolated=isolated, egress=egress, cpu_runs=cpu_runs,
                           session=session)  # fmt: skip

    def _spawn(
        self,
        venv: Path | None,
        code: Path | None,
        argv: list[str],
        *,
        limits: Limits,
        isolated: bool,
        writable_env: bool = False,
        egress: EgressPolicy | None = None,
        on_refusal: LogSink | None = None,
        stdin: int = subprocess.PIPE,
        stderr: int = subprocess.PIPE,
        cpu_runs: int | None = 1,
        session: SessionMount | None = None,
        daemon: bool = False,
        wrap: Callable[..., Confined] = ProcessRun,
    ) -> Confined:
        """Start `argv` confined. Isolated: bwrap with a network namespace of its own (its one
        way out, when `egress` is given, the egress proxy on a Unix socket), a uid of its own
        (owning the venv when `writable_env`), a size-capped workspace holding /tmp (or the
        `session`'s workspace and a capped /tmp; `daemon`: the session's own sandbox, which
        gets its control directory until `seal_control_dir`), rlimits, cgroups. Unisolated:
        rlimits and cgroups only. Returns `wrap(limits, proc, members, lease=, run_dir=,
        run_lock=, proxy=)` (a ProcessRun by default)."""
        run_id, run_dir, run_lock = _new_run_dir(self.root / "runs")
        cgroups = self.cgroups(run_id) if self.cgroups is not None else None
        lease = None
        program = None  # the seccomp filter's fd, for bwrap
        proxy = None
        try:
            lease = UidLease(self.uid_base) if isolated else None
            workspace = run_dir / "workspace"
            if lease is not None:
                os.chown(workspace, lease.uid, lease.uid)
                if writable_env and venv is not None:
                    _chown_tree(venv, lease.uid)
                if daemon and session is not None:
                    give_control_dir(session.control_dir, lease.uid)
            _write_identity(run_dir, lease.uid if lease else os.getuid())
            if cgroups is not None:
                cgroups.create(limits, helpers=2 if isolated else 0)
            if isolated and egress is not None:
                (run_dir / "net").mkdir(mode=0o755)
                proxy = EgressProxy(run_dir / "net" / SOCKET_NAME, egress, on_refusal=on_refusal)
                proxy.start()
            if isolated:
                program = seccomp.program_fd()
            command = SandboxCommand(
                tools=self.tools,
                program=tuple(argv),
                limits=limits,
                venv=venv,
                code=code,
                run_dir=run_dir,
                isolated=isolated,
                uid=lease.uid if lease is not None else None,
                writable_env=writable_env,
                egress=proxy is not None,
                seccomp_fd=program,
                cgroup_procs=tuple(cgroups.procs_files) if cgroups is not None else None,
                python_prefix=self.python_prefix,
                system_links=system_links() if isolated else (),
                cpu_runs=cpu_runs,
                session=session,
                daemon=daemon,
            )
            proc = SPAWNER.popen(
                command.argv(),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=command.launcher_env(),
                cwd=str(command.cwd()),
                start_new_session=True,
                close_fds=True,
                pass_fds=() if program is None else (program,),
            )
        except BaseException:
            if proxy is not None:
                proxy.close()
            if cgroups is not None:
                cgroups.remove()
            shutil.rmtree(run_dir, ignore_errors=True)
            os.close(run_lock)
            if lease is not None:
                lease.release()
            raise
        finally:
            if program is not None:
                os.close(program)  # bwrap has its own copy
        members = Members(cgroups, lease.uid if lease else None)
        if cgroups is None and lease is None:
            members.pgid = proc.pid
        return wrap(
            limits, proc, members, lease=lease, run_dir=run_dir, run_lock=run_lock, proxy=proxy
        )


# --- helpers ---------------------------------------------------------------------------------


def _feed(proc: subprocess.Popen, request: bytes, *, close: bool = True) -> None:
    """Write a request on the runner's stdin, then close it unless another request follows
    (the runner may already be gone)."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(request)
        if close:
            proc.stdin.close()
        else:
            proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _new_run_dir(runs: Path) -> tuple[str, Path, int]:
    """(id, directory, fd holding its lock) of a new run directory under `runs`, holding an
    empty `workspace`. A sweep (of this or another process) deletes the directories whose lock
    nobody holds: one that takes this lock between its creation and our flock has deleted
    the directory by the time we get the lock, so a fresh one is made then."""
    while True:
        run_id = secrets.token_hex(8)
        run_dir = runs / run_id
        (run_dir / "workspace").mkdir(parents=True)
        run_dir.chmod(0o755)
        try:
            fd = hold_lock(run_dir / "lock")
        except FileNotFoundError:
            continue  # swept as the lock file was being made
        try:
            if os.stat(run_dir / "lock").st_ino == os.fstat(fd).st_ino:
                return run_id, run_dir, fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the lock of a directory a sweep has deleted meanwhile


def _free(
    proc: subprocess.Popen,
    members: Members,
    proxy: EgressProxy | None,
    run_dir: Path,
    run_lock: int,
    lease: UidLease | None,
) -> None:
    """Release what a sandbox held once its processes are gone: its pipes, egress proxy,
    cgroups, run directory, lock and uid."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if proxy is not None:
        proxy.close()
    try:
        if members.cgroups is not None:
            members.cgroups.remove()
        shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        os.close(run_lock)
        if lease is not None:
            lease.release()


def _write_identity(run_dir: Path, uid: int) -> None:
    """/etc/passwd and /etc/group of the sandbox: root and the run's user, nobody else."""
    (run_dir / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"agent:x:{uid}:{uid}:agent:/workspace:/usr/sbin/nologin\n"
    )
    (run_dir / "group").write_text(f"root:x:0:\nagent:x:{uid}:\n")


def _copy_readable(source: Path, target: Path) -> None:
    """Copy the code so any uid can read it (archives may carry 0600 files); links are kept."""
    shutil.copytree(source, target, symlinks=True)
    for dirpath, _dirnames, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)


def _chown_tree(path: Path, uid: int) -> None:
    os.lchown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
