"""The sandbox interface: plain data in, protocol events out.

Nothing here knows Django models. A backend builds a version's environment
(`prepare`), imports its entrypoint inside the sandbox (`inspect`) and starts runs
(`start`); a `Run` handle streams events and is paused, resumed and killed by the host.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    ) -> Run:
        """Start a run of `entrypoint` with `payload` (and restored `state`). `run_id` names
        the run for `kill_run`."""

    def kill_run(self, run_id: str) -> None:
        """Kill what is left of a run whose supervisor died (its worker was killed).

        Backends whose sandboxes die with the process that started them need do nothing."""
        return None

    def sweep(self) -> list[str]:
        """Kill and delete what is left of the runs of this host whose worker died (processes,
        cgroups, containers, egress sockets); runs of live workers are left alone. Returns the
        ids of the runs swept. Called by every upkeep pass."""
        return []

    @abc.abstractmethod
    def remove(self, env: Environment) -> None:
        """Delete what `prepare` made for this environment."""
