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
                    (a reusable sandbox's: `_send(request, last=False)`, stdin stays open)
    _take_fields(limits)  optional, warm sandboxes: more fields of the run's request (rlimits)

A warm sandbox (`WarmStream`) is a `StreamRun` begun with `warm=True` whose runner got a
`warm_request`: the runner imports the entrypoint, says `ready` (consumed here, never an event
of the run) and waits; what it printed meanwhile is read and kept as the run's first events.
Taking it sends the run's request and starts the clock; from then on it is that run.

A reusable warm sandbox (`ReusableStream`) serves runs one after another: its runner's output
is cut into one stream per run (`ReusedRun`), see that class.
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
# How the runner writes `ready` and the start of a terminal message (json.dumps' spacing):
# a reusable sandbox's output is cut into runs by these, without parsing every line twice.
READY_LINE = b'{"type": "ready", "data": {}}\n'
TERMINAL_STARTS = (b'{"type": "result", ', b'{"type": "error", ')
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


def warm_request(env: Environment, entrypoint: str, *, run_cpu_seconds: int | None = None) -> bytes:
    """The first request of a warm sandbox: import `entrypoint` with the manifest's `env` set,
    then wait for the run's request (`encode_request("run", …)` with the run's own variables).
    With `run_cpu_seconds` (the most CPU seconds a run may be given) the sandbox is reusable."""
    fields = None if run_cpu_seconds is None else {"reuse": {"run_cpu_seconds": run_cpu_seconds}}
    return encode_request("warm", entrypoint, env=env.manifest.get("env") or {}, fields=fields)


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
        """The run; `run_id` names it for `kill_run` where the backend renames the sandbox
        after its run (`DockerBackend`), else it is not used."""
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


class _Segment:
    """The runner's output for one run of a reusable sandbox: that run's stream (`readline`
    and `read` as `StreamRun` uses them), fed by the sandbox's router."""

    def __init__(self, cap: int) -> None:
        self._cond = threading.Condition()
        self._data = bytearray()
        self._ended = False
        self._cap = cap  # past it the run has failed its output budget: the rest is not kept
        self._fed = 0
        self.settled = threading.Event()  # the end is known, and what followed it
        self.clean = False  # ended by its terminal message, and the runner said ready after it

    def feed(self, piece: bytes) -> None:
        with self._cond:
            if self._fed <= self._cap:
                self._data += piece
                self._fed += len(piece)
                self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def settle(self, *, clean: bool) -> None:
        self.end()
        self.clean = clean
        self.settled.set()

    def readline(self, size: int = -1) -> bytes:
        with self._cond:
            while True:
                newline = self._data.find(b"\n")
                if newline >= 0 and (size < 0 or newline < size):
                    return self._take(newline + 1)
                if 0 <= size <= len(self._data) or self._ended:
                    return self._take(size if size >= 0 else len(self._data))
                self._cond.wait()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._data and not self._ended:
                self._cond.wait()
            return self._take(size if size >= 0 else len(self._data))

    def _take(self, size: int) -> bytes:
        piece = bytes(self._data[:size])
        del self._data[:size]
        return piece


class _Router:
    """The stream of a reusable sandbox's own `StreamRun`: its first read hands the runner's
    whole output out to the runs (`route`) and then it is empty, so that StreamRun releases the
    sandbox only once the output was read to its end."""

    def __init__(self, route) -> None:
        self._route = route

    def readline(self, size: int = -1) -> bytes:
        route, self._route = self._route, None
        if route is not None:
            route()
        return b""

    read = readline


class ReusableStream(WarmSandbox):
    """A warm sandbox that serves up to `max_runs` runs of its entrypoint, one after another
    (the runner's reusable warm mode, see `sandbox/runner.py`).

    `sandbox` is the `StreamRun` of the sandbox's processes, begun here without a clock; each
    run is a `ReusedRun` reading its own part of the runner's output, with its own clock and
    output budget. A run ends once the runner said `ready` again after the run's terminal
    message, or once the sandbox ended: when its `wait()` returns, the sandbox has been handed
    back (`on_free`) or is gone. It is handed back only after a run that completed or failed
    with the agent's own exception, with no kill, timeout, output limit, pause or OOM kill on
    the way, while it has runs left and was not discarded; any other end kills it.

    Given up: the runs share the agent's process, so module state (globals, imported modules,
    open files and connections) carries from one run to the next; only the owner's own runs
    of one version may share a sandbox.
    """

    def __init__(
        self,
        sandbox: StreamRun,
        stream: BinaryIO,
        env: Environment,
        entrypoint: str,
        limits: Limits,
        *,
        max_runs: int,
    ) -> None:
        super().__init__(env, entrypoint, limits)
        self.sandbox = sandbox
        self.max_runs = max_runs
        self.runs = 0
        self._lock = threading.Lock()
        self._stream = stream
        self._segment = _Segment(limits.max_output_bytes)  # the next run's
        self._ending: _Segment | None = None  # the latest run's, until the runner is ready
        self._imported = False
        self._ready = threading.Event()
        self._run: ReusedRun | None = None
        self._discarded = False
        sandbox._begin(_Router(self._route), warm=True)  # type: ignore[arg-type]

    def _route(self) -> None:
        """Read the runner's output to its end: a run's lines to its segment up to and with
        its terminal message, `ready` to this sandbox; between a terminal message and `ready`
        nothing is kept (the runner sends nothing then)."""
        line_start, terminal = True, False
        while True:
            try:
                piece = self._stream.readline(_DRAIN_CHUNK)
            except (OSError, ValueError):
                break
            if not piece:
                break
            with self._lock:
                if line_start:
                    if piece == READY_LINE and (self._ending is not None or not self._imported):
                        self._said_ready()
                        continue
                    terminal = piece.startswith(TERMINAL_STARTS)
                line_start = piece.endswith(b"\n")
                if self._ending is not None:
                    continue
                self._segment.feed(piece)
                if line_start and terminal:
                    self._ending, self._segment = self._segment, _Segment(self._segment._cap)
                    self._ending.end()
        with self._lock:
            for segment in (self._segment, self._ending):
                if segment is not None:
                    segment.settle(clean=False)

    def _said_ready(self) -> None:
        self._imported = True
        if self._ending is not None:
            self._ending.settle(clean=True)
            self._ending = None
        self._ready.set()

    def _takeable(self) -> bool:
        return (
            not self._discarded
            and self.runs < self.max_runs
            and not self.sandbox._finished.is_set()
        )

    def take(
        self,
        payload: Any,
        *,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
        run_id: str | None = None,
    ) -> Run:
        """The next run; `run_id` is not used. Raises SandboxError while a run is going, after
        `max_runs` runs and once the sandbox is discarded or dead."""
        limits = self._limits_for(timeout_seconds)
        request = encode_request(
            "run", self.entrypoint, payload, state=state, env=env_vars,
            fields=self.sandbox._take_fields(limits),
        )  # fmt: skip
        with self._lock:
            if self._run is not None or not self._takeable():
                raise SandboxError("this sandbox cannot take a run now")
            self.runs += 1
            self._ready.clear()
            run = self._run = ReusedRun(self, self._segment, limits)
        run._begin(run.segment, warm=True)  # type: ignore[arg-type]
        run._take(request, limits)
        return run

    def _end_of(self, reusable: bool) -> bool:
        """A run ended (`reusable`: as a run the next may follow); True when the sandbox is
        back for the next one."""
        with self._lock:
            self._run = None
            if not (reusable and self._takeable()):
                return False
            self.idle_since = time.monotonic()
            return True

    def discard(self) -> None:
        """Kill the sandbox now or, while a run is going, when that run ends."""
        with self._lock:
            self._discarded = True
            busy = self._run is not None
        if not busy:
            self.sandbox.kill()

    def alive(self) -> bool:
        with self._lock:
            return self._takeable()

    def ready(self) -> bool:
        with self._lock:
            return self._run is None and self._ready.is_set()


class ReusedRun(StreamRun):
    """One run of a `ReusableStream`: its events come from its part of the runner's output;
    its processes, usage and walls are the sandbox's (the peak memory is the sandbox's so
    far, the CPU time this run's)."""

    def __init__(self, owner: ReusableStream, segment: _Segment, limits: Limits) -> None:
        super().__init__(limits)
        self.owner = owner
        self.segment = segment
        self._back = False  # the sandbox went back to its owner: nothing of it is this run's
        self._killing = False
        self._oom = False
        try:
            self._cpu_before = owner.sandbox._usage()[1]
        except Exception:  # noqa: BLE001 — the sandbox is gone: no figure
            self._cpu_before = None
        self.ready.set()  # the sandbox's router consumes the runner's `ready`

    def _freeze(self) -> None:
        if not self._back:
            self.owner.sandbox._freeze()

    def _thaw(self) -> None:
        if not self._back:
            self.owner.sandbox._thaw()

    def _kill_all(self) -> None:
        with self._lock:
            if self._back:
                return
            self._killing = True
        self.owner.sandbox.kill()

    def _exit_status(self) -> int | None:
        """Returns once the run's output ended: with its terminal message and the runner's
        `ready` after it (then the sandbox goes back to its owner, or is killed here when it
        may not serve another run), or with the sandbox."""
        segment = self.segment
        segment.settled.wait()
        if self._reader is not None:
            self._reader.join()
        sandbox = self.owner.sandbox
        if not segment.clean:
            ended = sandbox.wait()
            self._oom = ended.error_type == ErrorType.OOM_KILLED
            return ended.exit_code
        try:
            healthy = not sandbox._oom_killed()
        except Exception:  # noqa: BLE001 — no cgroup to ask: not reused
            healthy = False
        with self._lock:
            terminal = self._terminal
            reusable = (
                healthy
                and terminal is not None
                and self._reason is None
                and not (self._killing or self._paused)
                and (
                    terminal.type == "result"
                    or terminal.data.get("error_type") == ErrorType.EXCEPTION
                )
            )
            self._back = self.owner._end_of(reusable)
        if not self._back:
            sandbox.kill()
        return 0 if terminal is not None and terminal.type == "result" else 1

    def _usage(self) -> tuple[float | None, int | None]:
        peak_mb, cpu_ms = self.owner.sandbox._usage()
        if cpu_ms is None or self._cpu_before is None:
            return peak_mb, None
        return peak_mb, cpu_ms - self._cpu_before

    def _oom_killed(self) -> bool:
        return self._oom

    def _diagnostics(self) -> str:
        return self.owner.sandbox._diagnostics()

    def _send(self, request: bytes) -> None:
        self.owner.sandbox._send(request, last=False)  # type: ignore[call-arg]

    def _release(self) -> None:
        if self._back and self.owner.on_free is not None:
            self.owner.on_free(self.owner)
