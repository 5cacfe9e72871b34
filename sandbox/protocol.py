"""Host side of the runner protocol, shared by every backend.

`StreamRun` reads the runner's JSON lines from a byte stream and does the bookkeeping every
backend needs: events, the output budget, the wall-clock timeout (paused time not counted),
pause/resume/kill and the final `Outcome`. A backend subclass starts the sandbox, then calls
`_begin(stream)` and implements the hooks:

    _freeze()       stop every process of the run (cgroup freezer, `docker pause`)
    _thaw()         undo `_freeze`
    _kill_all()     kill every process of the run; return only when all are gone
                    (may be called more than once, from several threads, and on a frozen run)
    _exit_status()  block until the sandbox's main process has ended; its exit code
                    (-N or 128+N for signal N)
    _usage()        (peak_memory_mb, cpu_ms) of the whole run, read after `_kill_all`
    _oom_killed()   optional: did the kernel's OOM killer act on the run?
    _diagnostics()  optional: text explaining a sandbox failure (e.g. stderr of the launcher)
    _release()      optional: free what the run held (cgroups, workspace), after the outcome
    _send(request)  warm sandboxes only: hand the run's request to the runner, then end its stdin
    _take_fields(limits)  optional, warm sandboxes: more fields of the run's request (rlimits)

A warm sandbox (`WarmStream`) is a `StreamRun` begun with `warm=True` whose runner got a
`warm_request`: the runner imports the entrypoint, says `ready` (consumed here, never an event
of the run) and waits; what it printed meanwhile is read and kept as the run's first events.
Taking it sends the run's request and starts the clock; from then on it is that run.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sandbox.base import (
    Environment,
    ErrorType,
    Event,
    Inspection,
    Limits,
    Outcome,
    Run,
    SandboxError,
    Status,
    WarmSandbox,
)

TERMINAL_TYPES = frozenset({"result", "error", "inspection"})
READY = "ready"  # a warm sandbox's runner has imported the entrypoint and waits for its request
# The one shape of an event type (the runner checks it too): a type travels into SSE frames
# and WebSocket messages, so it never carries a newline or anything a frame is made of.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
LOG_SOURCES = frozenset({"stdout", "stderr", "agent"})  # "platform" is the host's own
LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})
AGENT_ERROR_TYPES = frozenset(
    {ErrorType.EXCEPTION, ErrorType.OOM_KILLED, ErrorType.RESOURCE_LIMIT, ErrorType.SANDBOX_ERROR}
)
RUNNER_PATH = Path(__file__).with_name("runner.py")
_END = object()
_DRAIN_CHUNK = 65536
_READER_FAILED = "reader_failed"

logger = logging.getLogger("sandbox.protocol")


def encode_request(
    mode: str,
    entrypoint: str,
    payload: Any = None,
    *,
    state: Any = None,
    env: dict[str, str] | None = None,
    fields: dict[str, Any] | None = None,
) -> bytes:
    """One line of JSON the runner reads on stdin (`env` travels here, never in argv)."""
    request = {"mode": mode, "entrypoint": entrypoint, "payload": payload, "state": state}
    request.update(fields or {})
    if env:
        request["env"] = {str(k): str(v) for k, v in env.items()}
    try:
        return json.dumps(request).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload and state must be JSON-serialisable: {exc}") from None


def run_request(
    env: Environment,
    entrypoint: str,
    payload: Any = None,
    *,
    state: Any = None,
    env_vars: dict[str, str] | None = None,
    mode: str = "run",
) -> bytes:
    """The request of a run (or an inspection) of a built version: the manifest's `env`,
    overridden by `env_vars`, travels with it on stdin."""
    variables = {**(env.manifest.get("env") or {}), **(env_vars or {})}
    return encode_request(mode, entrypoint, payload, state=state, env=variables)


def warm_request(env: Environment, entrypoint: str) -> bytes:
    """The first request of a warm sandbox: import `entrypoint` with the manifest's `env` set,
    then wait for the run's request (`encode_request("run", …)` with the run's own variables)."""
    return encode_request("warm", entrypoint, env=env.manifest.get("env") or {})


def parse_line(line: bytes) -> Event | None:
    """One protocol line as an Event, or None when the line is not a protocol message: not
    JSON, nested too deeply to parse (RecursionError), or a type that is not `EVENT_TYPE`."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if (
        isinstance(message, dict)
        and isinstance(message.get("type"), str)
        and EVENT_TYPE.fullmatch(message["type"])
        and isinstance(message.get("data"), dict)
    ):
        return Event(message["type"], message["data"])
    return None


def refusal(event: Event) -> str | None:
    """Why a non-terminal event from the sandbox is refused, or None. The runner always sends
    well-formed events; this guards against an agent writing to the protocol fd itself."""
    kind, data = event.type, event.data
    if kind.startswith("run_") or not EVENT_TYPE.fullmatch(kind):
        return f"refused reserved event type {kind[:64]!r}"
    wanted = {
        "content_delta": ("content", str),
        "tool_call": ("name", str),
        "tool_result": ("name", str),
        "log": ("message", str),
    }.get(kind)
    if wanted and not isinstance(data.get(wanted[0]), wanted[1]):
        return f"refused malformed {kind} event"
    if kind == "log" and (
        data.get("source") not in LOG_SOURCES or data.get("level") not in LOG_LEVELS
    ):
        return "refused log event with an unknown source or level"
    if kind == "checkpoint" and "state" not in data:
        return "refused checkpoint event without state"
    return None


def inspection_from(outcome: Outcome) -> Inspection:
    """The `Inspection` of a run started in inspect mode."""
    data = outcome.output if outcome.status == Status.COMPLETED else None
    if not isinstance(data, dict):
        return Inspection(ok=False, error=outcome.error or f"inspection {outcome.status}")
    is_callable = bool(data.get("callable"))
    return Inspection(
        ok=is_callable and not data.get("error"),
        callable=is_callable,
        signature=data.get("signature"),
        error=data.get("error"),
        traceback=data.get("traceback"),
    )


def signal_of(exit_code: int | None) -> int | None:
    """The signal that ended a process, from Popen (-N) or shell/bwrap/docker (128+N) codes."""
    if exit_code is None:
        return None
    if exit_code < 0:
        return -exit_code
    if 128 < exit_code < 128 + 65:
        return exit_code - 128
    return None


class StreamRun(Run):
    """Protocol bookkeeping of one run; see the module docstring for the hooks.

    Guarantees: `events()` ends after the last event; `wait()` returns the outcome once every
    process of the run is gone; a terminal message read before any kill decides the outcome;
    otherwise kill() → cancelled, the clock → timed_out, the output budget → output_limit.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        self._kill_lock = threading.Lock()
        self._finished = threading.Event()
        self._reason: str | None = None  # cancelled / timed_out / output_limit
        self._terminal: Event | None = None
        self._output_bytes = 0
        self._paused = False
        self._closing = False  # set (under _lock) before the run's resources are released
        self._active_s = 0.0  # running time before the current stretch
        self._since = time.monotonic()  # start of the current running stretch
        self._outcome: Outcome | None = None
        self._stream: BinaryIO | None = None
        self._reader: threading.Thread | None = None
        self.ready = threading.Event()  # a warm sandbox's runner said `ready` (cold: at once)

    # --- hooks --------------------------------------------------------------------------

    def _freeze(self) -> None:
        raise NotImplementedError

    def _thaw(self) -> None:
        raise NotImplementedError

    def _kill_all(self) -> None:
        raise NotImplementedError

    def _exit_status(self) -> int | None:
        raise NotImplementedError

    def _usage(self) -> tuple[float | None, int | None]:
        return None, None

    def _oom_killed(self) -> bool:
        return False

    def _diagnostics(self) -> str:
        return ""

    def _release(self) -> None:
        pass

    def _send(self, request: bytes) -> None:
        raise NotImplementedError

    def _take_fields(self, limits: Limits) -> dict[str, Any]:
        return {}

    # --- lifecycle ----------------------------------------------------------------------

    def _begin(self, stream: BinaryIO, *, warm: bool = False) -> None:
        """Start reading `stream` (anything with `readline(size)` returning bytes) and, unless
        the sandbox is `warm` (its clock starts at `_take`), the clock. Call once, right after
        the sandbox started."""
        self._stream = stream
        if not warm:
            self.ready.set()
        self._reader = threading.Thread(target=self._read, name="run-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._supervise, name="run-supervisor", daemon=True).start()
        if not warm:
            self._start_clock()

    def _start_clock(self) -> None:
        with self._lock:
            self._since = time.monotonic()
        threading.Thread(target=self._watch_clock, name="run-clock", daemon=True).start()

    def _take(self, request: bytes, limits: Limits) -> None:
        """The run of a warm sandbox begins: its limits (its timeout may be shorter than the
        warm sandbox's), the clock, then the request."""
        self.limits = limits
        self._start_clock()
        self._send(request)

    def _active_seconds(self) -> float:
        with self._lock:
            if self._paused:
                return self._active_s
            return self._active_s + time.monotonic() - self._since

    def _stop(self, reason: str) -> None:
        """End the run for `reason` unless it already has an end; kills every process."""
        if self._claim_end(reason):
            self._kill_everything()

    def _claim_end(self, reason: str) -> bool:
        """Record `reason` as the end unless the run already has one; False once finished."""
        with self._lock:
            if self._finished.is_set():
                return False
            if self._reason is None and self._terminal is None:
                self._reason = reason
        return True

    def _stop_soon(self, reason: str) -> None:
        """`_stop` from another thread: the reader must go on draining the stream while the
        sandbox is killed (an engine may not remove a container whose output nobody reads)."""
        if self._claim_end(reason):
            threading.Thread(target=self._kill_everything, name="run-killer", daemon=True).start()

    def _kill_everything(self) -> None:
        """`_kill_all`, serialised; a failure is logged (the supervisor tries again), never
        raised into the thread that asked (a clock, a reader, a killer)."""
        try:
            with self._kill_lock:
                self._kill_all()
        except Exception:  # noqa: BLE001 — the run must still end with an outcome
            logger.exception("could not kill the sandbox of a run")

    def _read(self) -> None:
        """Read the stream to its end. Whatever happens here (the budget, a bad line, a bug)
        the stream is drained until the sandbox is gone, so a kill never waits on the reader."""
        try:
            self._read_protocol()
        except Exception as exc:  # noqa: BLE001 — the run ends as a sandbox error instead
            logger.exception("the reader of a run failed")
            self._events.put(
                Event(
                    "error",
                    {"message": f"the platform could not read the run: {type(exc).__name__}"},
                )
            )
            self._stop_soon(_READER_FAILED)
        self._drain()

    def _drain(self) -> None:
        """Read and drop everything left, until the stream ends (the sandbox is gone)."""
        assert self._stream is not None
        read = getattr(self._stream, "read1", self._stream.read)
        while True:
            try:
                if not read(_DRAIN_CHUNK):
                    return
            except (OSError, ValueError):
                return

    def _read_protocol(self) -> None:
        assert self._stream is not None
        budget = self.limits.max_output_bytes
        while True:
            if self._reason is not None or self._terminal is not None:
                return  # after the end, `_drain` reads without keeping anything
            try:
                line = self._stream.readline(max(budget - self._output_bytes, 0) + 1)
            except (OSError, ValueError):
                return
            if not line:
                return
            if self._reason is not None or self._terminal is not None:
                continue
            if not self.ready.is_set():
                said = parse_line(line)
                if said is not None and said.type == READY:
                    self.ready.set()
                    continue
            self._output_bytes += len(line)
            if self._output_bytes > budget:
                self._events.put(
                    Event("error", {"message": f"output truncated: over {budget} bytes"})
                )
                self._stop_soon(ErrorType.OUTPUT_LIMIT)
                continue
            if not line.strip():
                continue
            event = parse_line(line)
            if event is None:
                # The runner never writes one; only an agent writing to the protocol fd does.
                self._events.put(Event("error", {"message": "refused a non-protocol line"}))
            elif event.type in TERMINAL_TYPES:
                with self._lock:
                    if self._reason is None:
                        self._terminal = event
                if event.type == "error" and event.data.get("traceback"):
                    self._events.put(
                        Event(
                            "log",
                            {
                                "level": "error",
                                "message": str(event.data["traceback"]),
                                "source": "agent",
                            },
                        )
                    )
            else:
                problem = refusal(event)
                self._events.put(Event("error", {"message": problem}) if problem else event)

    def _supervise(self) -> None:
        """Wait for the sandbox to end, make sure nothing of it survives, compute the outcome."""
        exit_code: int | None = None
        try:
            exit_code = self._exit_status()
        except Exception:  # noqa: BLE001 — decided below as a sandbox error
            logger.exception("could not wait for the sandbox of a run")
        finally:
            self._kill_everything()
            if self._reader is not None:
                self._reader.join(10)
            duration_ms = int(self._active_seconds() * 1000)
            try:
                peak_mb, cpu_ms = self._usage()
            except Exception:  # noqa: BLE001
                peak_mb, cpu_ms = None, None
            try:
                outcome = self._decide(exit_code)
            except Exception:  # noqa: BLE001
                logger.exception("could not decide the outcome of a run")
                outcome = Outcome(
                    status=Status.FAILED,
                    error="the sandbox ended without a result",
                    error_type=ErrorType.SANDBOX_ERROR,
                )
            self._outcome = Outcome(
                status=outcome.status,
                exit_code=exit_code,
                output=outcome.output,
                error=outcome.error,
                error_type=outcome.error_type,
                duration_ms=duration_ms,
                peak_memory_mb=peak_mb,
                cpu_ms=cpu_ms,
            )
            with self._lock:
                self._closing = True
            try:
                self._release()
            except Exception:  # noqa: BLE001 — the outcome stands; the sweep cleans the rest
                logger.exception("could not release the sandbox of a run")
            finally:
                self._finished.set()
                with self._lock:
                    self._lock.notify_all()
                self._events.put(_END)

    def _decide(self, exit_code: int | None) -> Outcome:
        reason, terminal = self._reason, self._terminal
        if terminal is not None:
            if terminal.type == "error":
                return Outcome(
                    status=Status.FAILED,
                    error=str(terminal.data.get("message") or "the agent failed"),
                    error_type=terminal.data.get("error_type")
                    if terminal.data.get("error_type") in AGENT_ERROR_TYPES
                    else ErrorType.EXCEPTION,
                )
            output = terminal.data.get("output") if terminal.type == "result" else terminal.data
            return Outcome(status=Status.COMPLETED, output=output)
        if reason == Status.CANCELLED:
            return Outcome(status=Status.CANCELLED, error="cancelled")
        if reason == Status.TIMED_OUT:
            return Outcome(
                status=Status.TIMED_OUT,
                error=f"timed out after {self.limits.timeout_seconds:g} s",
            )
        if reason == ErrorType.OUTPUT_LIMIT:
            return Outcome(
                status=Status.FAILED,
                error=f"the run wrote more than {self.limits.max_output_bytes} bytes of output",
                error_type=ErrorType.OUTPUT_LIMIT,
            )
        sig = signal_of(exit_code)
        if self._oom_killed():
            return Outcome(
                status=Status.FAILED,
                error=f"out of memory (limit {self.limits.memory_mb} MB)",
                error_type=ErrorType.OOM_KILLED,
            )
        if sig == signal.SIGXCPU:
            return Outcome(
                status=Status.FAILED,
                error="CPU time limit exceeded",
                error_type=ErrorType.RESOURCE_LIMIT,
            )
        if sig == signal.SIGXFSZ:
            return Outcome(
                status=Status.FAILED,
                error=f"file size limit exceeded ({self.limits.max_file_mb} MB)",
                error_type=ErrorType.RESOURCE_LIMIT,
            )
        how = f"signal {signal.Signals(sig).name}" if sig else f"exit code {exit_code}"
        detail = self._diagnostics().strip()
        return Outcome(
            status=Status.FAILED,
            error=f"the sandbox ended ({how}) without a result" + (f": {detail}" if detail else ""),
            error_type=ErrorType.SANDBOX_ERROR,
        )

    def _watch_clock(self) -> None:
        limit = self.limits.timeout_seconds
        with self._lock:
            while not self._finished.is_set():
                if self._paused:
                    self._lock.wait()
                    continue
                left = limit - (self._active_s + time.monotonic() - self._since)
                if left <= 0:
                    break
                self._lock.wait(left)
            else:
                return
        self._stop(Status.TIMED_OUT)

    # --- Run API ------------------------------------------------------------------------

    def events(self) -> Iterator[Event]:
        """Yield events as they happen (content_delta, tool_call, tool_result, log, checkpoint,
        custom, non-fatal error); ends when the run has ended and every event was read."""
        while True:
            item = self._events.get()
            if item is _END:
                self._events.put(_END)  # a second reader also ends
                return
            yield item

    def pause(self) -> None:
        """Freeze every process of the run; the clock stops. No-op when paused or ended."""
        with self._lock:
            if self._paused or self._closing or self._reason is not None:
                return
            self._freeze()
            self._active_s += time.monotonic() - self._since
            self._paused = True
            self._lock.notify_all()

    def resume(self) -> None:
        """Thaw every process of the run; the clock runs again. No-op unless paused."""
        with self._lock:
            if not self._paused:
                return
            if not self._closing:
                self._thaw()
            self._paused = False
            self._since = time.monotonic()
            self._lock.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def kill(self) -> None:
        """Kill the run; returns only when every process of it is gone (outcome: cancelled,
        unless the run had already ended)."""
        self._stop(Status.CANCELLED)
        self._finished.wait()

    def wait(self, timeout: float | None = None) -> Outcome:
        """Wait for the end and return the outcome; events not yet read stay readable by
        `events()`. Raises TimeoutError when `timeout` seconds pass first."""
        if not self._finished.wait(timeout):
            raise TimeoutError("the run is still going")
        assert self._outcome is not None
        return self._outcome


class WarmStream(WarmSandbox):
    """A warm sandbox of a backend whose runs are `StreamRun`s (see the module docstring)."""

    def __init__(self, run: StreamRun, env: Environment, entrypoint: str, limits: Limits):
        super().__init__(env, entrypoint, limits)
        self.run = run

    def take(
        self,
        payload: Any,
        *,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        run_id: str | None = None,
    ) -> Run:
        """The run; `run_id` is not used (the sandbox was named when it started)."""
        limits = self._limits_for(timeout_seconds)
        request = encode_request(
            "run", self.entrypoint, payload, state=state, env=env_vars,
            fields=self.run._take_fields(limits),
        )  # fmt: skip
        if not self._claim():
            raise SandboxError("a warm sandbox is used once")
        self.run._take(request, limits)
        return self.run

    def discard(self) -> None:
        if self._claim():
            self.run.kill()

    def alive(self) -> bool:
        return not self._used and not self.run._finished.is_set()

    def ready(self) -> bool:
        return self.run.ready.is_set()
