"""The sandbox interface: plain data in, protocol events out.

Nothing here knows Django models. A backend builds a version's environment
(`prepare`), imports its entrypoint inside the sandbox (`inspect`) and starts runs
(`start`, or ahead of time with `warm`); a `Run` handle streams events and is paused,
resumed and killed by the host. A session (`start_session(SessionSpec)`) is a long-lived
sandbox serving a workspace through its daemon (`sandbox/session_agent.py`); a run may be
started inside a session's workspace (`start(..., workspace=SessionMount(...))`). What the
backends share about sessions is in `sandbox.session`.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

LogSink = Callable[[str], None]


class SandboxError(Exception):
    """The sandbox could not do what was asked (not the agent's fault)."""


class SandboxUnavailable(SandboxError):
    """The backend cannot isolate code on this host (no bwrap, no namespaces, no engine)."""


class BuildError(SandboxError):
    """Building a version's environment failed; the message is readable by the agent's author."""


@dataclass(frozen=True)
class Limits:
    """Hard limits of one run: the manifest's wishes capped by the server's maxima."""

    timeout_seconds: float = 30.0
    memory_mb: int = 256
    cpus: float = 0.5
    pids: int = 64
    max_output_bytes: int = 10 * 1024 * 1024
    max_file_mb: int = 64
    max_open_files: int = 256
    workspace_mb: int = 256  # the workspace and /tmp together
    network: bool = False


@dataclass(frozen=True)
class Environment:
    """A built version: where its code and dependencies live for a backend."""

    backend: str
    key: str
    source_dir: Path
    location: str
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inspection:
    """Result of importing an entrypoint inside the sandbox."""

    ok: bool
    callable: bool = False
    signature: str | None = None
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True)
class Event:
    """One protocol event of a run (DESIGN §5), as the runner emitted it."""

    type: str
    data: dict[str, Any]


class Status:
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class ErrorType:
    EXCEPTION = "exception"
    OOM_KILLED = "oom_killed"
    RESOURCE_LIMIT = "resource_limit"
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class Outcome:
    """How a run ended. `error_type` is set only when `status` is failed."""

    status: str
    exit_code: int | None = None
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    duration_ms: int = 0
    peak_memory_mb: float | None = None
    cpu_ms: int | None = None


class Run(abc.ABC):
    """A running agent. Thread-safe for `pause`, `resume` and `kill` while `events()` is read."""

    @abc.abstractmethod
    def events(self) -> Iterator[Event]:
        """Yield protocol events as they happen; ends when the run has ended."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze every process of the run; paused time does not count toward the timeout."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Thaw every process of the run."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill the run; returns only when every process of it is gone. Outcome: cancelled."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> Outcome:
        """Wait for the end (draining events not yet read) and return the outcome."""


class WarmSandbox(abc.ABC):
    """A sandbox started ahead of one run of `entrypoint` of `env`, under `limits` (whose
    timeout the run may change): taken once, or discarded, never both and never twice.

    Where a backend can, the runner has already imported the entrypoint (with the manifest's
    `env` set) and waits for the run's request, so the run skips the start of the sandbox and
    the import. The run's own `env_vars` are set only when it is taken: they are not visible
    to code that runs at import time. A take may shorten the timeout, never lengthen it: limits
    that follow it (the process backend's CPU seconds) were set when the sandbox started, and
    only lowered to the run's own then.
    """

    # A reusable sandbox calls this with itself when a run of it ended and it can take the
    # next (from the thread ending the run, before that run's `wait()` returns).
    on_free: Callable[[WarmSandbox], None] | None = None

    def __init__(self, env: Environment, entrypoint: str, limits: Limits) -> None:
        self.env = env
        self.entrypoint = entrypoint
        self.limits = limits
        self.started = time.monotonic()
        self.idle_since = self.started  # its start, or the end of its latest run
        self._used = False
        self._used_lock = threading.Lock()

    def _claim(self) -> bool:
        """Mark the sandbox used; False when it already was (taken or discarded)."""
        with self._used_lock:
            if self._used:
                return False
            self._used = True
            return True

    def _limits_for(self, timeout_seconds: float | None) -> Limits:
        """The run's limits; ValueError for a timeout longer than the sandbox's."""
        if timeout_seconds is None:
            return self.limits
        if timeout_seconds > self.limits.timeout_seconds:
            raise ValueError(
                f"a sandbox warmed for {self.limits.timeout_seconds:g} s cannot run for "
                f"{timeout_seconds:g} s"
            )
        return replace(self.limits, timeout_seconds=timeout_seconds)

    @abc.abstractmethod
    def take(
        self,
        payload: Any,
        *,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        run_id: str | None = None,
    ) -> Run:
        """The run, as `Backend.start` would give it; its clock starts now. `run_id` names the
        run for `Backend.kill_run`, as `start`'s does. Raises SandboxError when the sandbox was
        already taken or discarded, ValueError when `payload` or `state` is not
        JSON-serialisable or `timeout_seconds` is longer than `limits`' (the sandbox then stays
        unused)."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Kill and delete the sandbox unless it was taken; returns when nothing of it is left
        (processes, cgroups, files, its uid)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """True while the sandbox can still be taken (unused, and not dead on its own)."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """True once taking it starts the handler at once (the import is done, or failed)."""


class ColdSandbox(WarmSandbox):
    """What `Backend.warm` gives by default: nothing is started ahead; `take` starts the run
    cold, so the run's `env_vars` are visible at import time too."""

    def __init__(self, backend: Backend, env: Environment, entrypoint: str, limits: Limits):
        super().__init__(env, entrypoint, limits)
        self.backend = backend

    def take(
        self,
        payload: Any,
        *,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        run_id: str | None = None,
    ) -> Run:
        limits = self._limits_for(timeout_seconds)
        if not self._claim():
            raise SandboxError("a warm sandbox is used once")
        return self.backend.start(
            self.env,
            self.entrypoint,
            payload,
            state=state,
            limits=limits,
            env_vars=env_vars,
            run_id=run_id,
        )

    def discard(self) -> None:
        self._claim()

    def alive(self) -> bool:
        return not self._used

    def ready(self) -> bool:
        return True


@dataclass(frozen=True)
class SessionMount:
    """A session's places on this host, as a sandbox gets them: `workspace` (the mounted
    workspace disk, bound read-write at /workspace) and `control_dir` (the directory of the
    daemon's socket, bound at /aimos/session)."""

    workspace: Path
    control_dir: Path


@dataclass(frozen=True)
class SessionSpec:
    """What a session's sandbox is made of.

    `workspace` and `control_dir`: as in `SessionMount`. `limits`: memory, cpus, pids,
    max_file_mb, max_open_files, network as for a run; `workspace_mb` is the size of its own
    /tmp; there is no timeout and no output cap (it lives until stopped). `env`: an agent
    version's environment (its Python and packages, its code at /code as for runs), or None
    for the base Python alone.
    """

    session_id: str
    workspace: Path
    control_dir: Path
    limits: Limits
    env: Environment | None = None

    @property
    def mount(self) -> SessionMount:
        return SessionMount(self.workspace, self.control_dir)


class SessionSandbox(abc.ABC):
    """A session's running sandbox: its daemon listens on `socket_path` (`ready` was read
    before `Backend.start_session` returned). Thread-safe."""

    SOCKET_NAME = "agent.sock"

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec

    @property
    def socket_path(self) -> Path:
        """The daemon's socket on this host (in `spec.control_dir`)."""
        return self.spec.control_dir / self.SOCKET_NAME

    @abc.abstractmethod
    def alive(self) -> bool:
        """True until the daemon (and so the sandbox) has ended, on its own or stopped."""

    @abc.abstractmethod
    def stop(self) -> None:
        """End the sandbox: every process of it killed, its cgroups, uid, container and
        egress proxy gone when this returns. Idempotent. The workspace is left as it is."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze every process of the sandbox (the daemon too: it answers nobody until
        `resume`). No-op once stopped."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Thaw every process of the sandbox. No-op unless paused."""

    def usage(self) -> dict[str, Any]:
        """What the sandbox has used so far, where cheap to know: `peak_memory_mb`,
        `cpu_ms` (each may be None)."""
        return {}


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def check(self) -> None:
        """Raise SandboxUnavailable with a clear message when this host cannot run the backend."""

    @abc.abstractmethod
    def availability(self) -> str | None:
        """None when this host can run the backend, else why not (the message `check()` would
        raise). Changes nothing on the host, so a status page may ask it."""

    @abc.abstractmethod
    def prepare(
        self,
        source_dir: Path,
        manifest: dict[str, Any],
        *,
        key: str,
        log: LogSink | None = None,
    ) -> Environment:
        """Build the environment of a version (requirements installed; network only here)."""

    @abc.abstractmethod
    def inspect(self, env: Environment, entrypoint: str) -> Inspection:
        """Import `module:function` inside the sandbox and report whether it is callable."""

    @abc.abstractmethod
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
        """Start a run of `entrypoint` with `payload` (and restored `state`). `run_id` names
        the run for `kill_run`. With `workspace` (a task run of a session) the run's
        /workspace is the session's workspace, bound read-write, instead of a tmpfs, its
        /tmp a tmpfs of `limits.workspace_mb` of its own, and the session's control directory
        is at /aimos/session (read-only: its daemon's socket); every other wall is a run's."""

    def start_session(self, spec: SessionSpec) -> SessionSandbox:
        """Start the sandbox of a session: walled as a run is (namespaces, no network unless
        `spec.limits.network`, then the egress proxy; its own uid, rlimits, cgroups or
        container limits, read-only root, /tmp a capped tmpfs), the workspace read-write at
        /workspace, the control directory at /aimos/session, running the session daemon.
        Returns once the daemon listens; raises SandboxError when it could not start, and
        SandboxUnavailable when this backend cannot hold sessions here."""
        raise SandboxUnavailable(f"the {self.name} sandbox cannot hold sessions")

    def warm(self, env: Environment, entrypoint: str, *, limits: Limits) -> WarmSandbox:
        """A sandbox for one later run of `entrypoint`, walled exactly as `start` walls one,
        started now where the backend can (see `WarmSandbox`); this default starts nothing
        and the run starts cold when taken. The manifest's `env` comes from `env.manifest`."""
        return ColdSandbox(self, env, entrypoint, limits)

    def warm_reusable(
        self, env: Environment, entrypoint: str, *, limits: Limits, max_runs: int
    ) -> WarmSandbox:
        """A warm sandbox that serves up to `max_runs` runs one after another, where the
        backend can (`sandbox.protocol.ReusableStream`); this default serves one. Only for
        runs that may share state: one owner's runs of one version."""
        return self.warm(env, entrypoint, limits=limits)

    def kill_run(self, run_id: str) -> None:
        """Kill what is left of a run whose supervisor died (its worker was killed), whether
        it started cold or from a warm sandbox taken with its `run_id`.

        Backends whose sandboxes die with the process that started them need do nothing."""
        return None

    def sweep(self) -> list[str]:
        """Kill and delete what is left of the runs and sessions of this host whose worker or
        session host died (processes, cgroups, containers, egress sockets); those of live
        processes are left alone. Returns the ids of the runs (and sessions) swept. Called by
        every upkeep pass."""
        return []

    @abc.abstractmethod
    def remove(self, env: Environment) -> None:
        """Delete what `prepare` made for this environment."""
