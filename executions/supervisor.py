"""The worker's side of a run: claim it, start the sandbox, record every event, apply the
user's controls, and record how it ended.

A `Supervisor` is driven by the `RunHost` of its process (`executions.host`): the run's
thread reads the sandbox's events (`supervise`); the host's control thread delivers control
messages (`apply`), renews the lease, flushes buffered deltas (`flush_if_due`) and enforces
the longest pause (`check_pause_limit`). The control thread serves every run of the host, so
nothing it calls here waits: a kill is handed to a thread of its own (the run's thread sees
the sandbox end and records it), and work that touches the database (a flush, a pause, a
resume) to the run's errand thread, which does it in order. Every process of the run is gone
before a terminal status is written. The run's start (claim and `run_started`) is one
transaction, and so is its end (its last events, its terminal status and terminal event).

A task of a session (`Execution.session`) runs in a sandbox of its own whose /workspace is the
session's workspace (`SessionMount`): always started cold, never from the warm pool nor a
reused sandbox, and only while its session is active with its workspace mounted on this
machine (else it ends `failed` saying why, before any sandbox starts).

A database or Redis that goes away for a moment (a restart, a terminated connection) is
ridden out (`core.transient`) for up to one lease: writes are tried again, controls wait in
their list. A run whose lease cannot be renewed for that long is killed, since the lost-run
sweep will soon declare it lost. Only the user's cancel ends a run `cancelled`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from django.conf import settings
from django.db import connections, transaction

from agents.builds import environment_of
from core.sandbox_settings import sandbox_config
from core.transient import TRANSIENT_ERRORS, retrying
from executions.choices import Control, ErrorType, ExecutionStatus
from executions.control import RunControl
from executions.events import record_events
from executions.models import Execution
from executions.outcomes import finish
from executions.task_workspaces import task_mount
from executions.waits import announce
from sandbox import get_backend, limits_for
from sandbox.session import SessionMount
from sandbox.warm import ReusePolicy

logger = logging.getLogger(__name__)

DELTA = "content_delta"
FLUSH_SECONDS = 0.05
FLUSH_SIZE = 64

# What a worker's own writes of the end start from: a run queued again meanwhile is not its.
HELD = [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED]

OUTCOME_STATUS = {
    "completed": ExecutionStatus.COMPLETED,
    "failed": ExecutionStatus.FAILED,
    "timed_out": ExecutionStatus.TIMED_OUT,
    "cancelled": ExecutionStatus.CANCELLED,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _direct(call):
    return call()


def reuse_of(execution: Execution) -> dict:
    """How the warm pool may serve the run: from a sandbox that served its owner's earlier runs
    of the version, when the manifest says `reuse: true` and the server allows it."""
    if not execution.version.manifest.get("reuse") or not settings.AIMOS_REUSE_MAX_RUNS:
        return {}
    policy = ReusePolicy(settings.AIMOS_REUSE_MAX_RUNS, settings.AIMOS_REUSE_IDLE_SECONDS)
    return {"reuse": policy, "owner": str(execution.user_id)}


class EventBuffer:
    """Events on their way to the database: deltas are written in batches (one write per
    batch), anything else at once, in order. `db` runs each write (on a host's connection)."""

    def __init__(self, execution_id, attempt: int | None = None, db=_direct) -> None:
        self.execution_id = execution_id
        self.attempt = attempt
        self.db = db
        self.pending: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.first_pending_at = 0.0
        self.closed = False

    def add(self, kind: str, data: dict) -> None:
        with self.lock:
            if self.closed:  # the run's end is being written: nothing comes after it
                return
            if not self.pending:
                self.first_pending_at = time.monotonic()
            self.pending.append((kind, data))
            due = (
                kind != DELTA
                or len(self.pending) >= FLUSH_SIZE
                or time.monotonic() - self.first_pending_at >= FLUSH_SECONDS
            )
            if due:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def due(self) -> bool:
        """Whether a delta has waited long enough to be written (read without the lock: a
        hint for the control thread, which must not wait for a write in progress)."""
        return bool(self.pending) and time.monotonic() - self.first_pending_at >= FLUSH_SECONDS

    def flush_if_due(self) -> None:
        with self.lock:
            if self.pending and time.monotonic() - self.first_pending_at >= FLUSH_SECONDS:
                self._write()

    def take(self) -> list[tuple[str, dict]]:
        """The events not written yet, for the caller to write (the run's last ones go with
        its outcome, in one transaction); later ones are dropped."""
        with self.lock:
            items, self.pending, self.closed = self.pending, [], True
            return items

    def _write(self) -> None:
        if self.pending:
            items, self.pending = self.pending, []
            self.db(
                lambda: retrying(
                    lambda: record_events(self.execution_id, items, attempt=self.attempt),
                    seconds=settings.AIMOS_RUN_LEASE_SECONDS,
                    what=f"recording events of execution {self.execution_id}",
                )
            )


class Ended:
    """Why the worker itself killed a run (an outcome of `cancelled` says only that it was
    killed)."""

    CANCEL = "cancel"
    PAUSE_LIMIT = "pause_limit"
    LEASE = "lease"
    CONTROL = "control"
    SHUTDOWN = "shutdown"


class Supervisor:
    def __init__(self, execution_id, *, queued: int | None = None) -> None:
        self.execution_id = str(execution_id)
        self.queued = queued
        self.host = None  # the `executions.host.RunHost` driving it, from `claim`
        self.buffer = EventBuffer(self.execution_id)
        self.execution: Execution | None = None
        self.run = None
        self.ended_by: str | None = None
        self.paused_since: float | None = None
        self.attempt: int | None = None
        self.renewed_at = time.monotonic()
        self.lock = threading.Lock()  # `run`, `ended_by`, the killer and the errands
        self.killer: threading.Thread | None = None
        # The control thread's database work for this run, in order, once there is some.
        self.errands: ThreadPoolExecutor | None = None
        self.errands_closed = False
        self.flush_asked = False

    def _db(self, call, what: str):
        """`call()` on the host's database connection, ridden through brief outages."""
        seconds = settings.AIMOS_RUN_LEASE_SECONDS
        where = f"{what} (execution {self.execution_id})"
        return self.host.db(lambda: retrying(call, seconds=seconds, what=where))

    def _kill(self, why: str) -> None:
        """Record why the run ends and kill its sandbox, if it started, in a thread of its own:
        returns at once (the run's thread sees the sandbox end). A sandbox that starts after
        this is killed by the run's thread."""
        with self.lock:
            if self.ended_by is None:
                self.ended_by = why
            run = self.run
            if run is None or (self.killer is not None and self.killer.is_alive()):
                return
            self.killer = threading.Thread(
                target=self._kill_now, args=(run,), name=f"run-kill-{self.execution_id}"
            )
            self.killer.daemon = True
            self.killer.start()

    def _kill_now(self, run) -> None:
        try:
            run.kill()
        except Exception:  # the run's thread still waits for its end; a later kill tries again
            logger.exception("could not kill execution %s", self.execution_id)

    def _errand(self, call) -> None:
        """`call()` on the run's errand thread, after the errands asked before it; nothing
        once the run's thread is done with the run."""
        with self.lock:
            if self.errands_closed:
                return
            if self.errands is None:
                name = f"run-errands-{self.execution_id}"
                self.errands = ThreadPoolExecutor(1, thread_name_prefix=name)
            self.errands.submit(call)

    def _close_errands(self) -> None:
        """No more errands; those asked still run, then the thread closes its connections."""
        with self.lock:
            self.errands_closed = True
            errands = self.errands
        if errands is not None:
            errands.submit(connections.close_all)
            errands.shutdown(wait=False)

    # --- the run's thread --------------------------------------------------------------------

    def claim(self, host) -> bool:
        """Take the run if it still waits for this job: `pending → running` with a lease, and
        its `run_started` event, in one transaction."""
        self.host = host
        self.buffer.db = host.db
        lease = settings.AIMOS_RUN_LEASE_SECONDS

        def claim() -> Execution | None:
            with transaction.atomic():
                if not Execution.claim(
                    self.execution_id, worker=worker_name(), lease_seconds=lease, queued=self.queued
                ):
                    return None
                execution = Execution.objects.select_related(
                    "agent", "version", "version__agent", "session"
                ).get(pk=self.execution_id)
                data = {
                    "run_id": self.execution_id,
                    "agent_id": str(execution.agent_id),
                    "version": execution.version.label,
                }
                record_events(execution.pk, [("run_started", data)], attempt=execution.attempt)
                return execution

        self.execution = self._db(claim, "claiming")
        if self.execution is None:
            return False
        # Every write of this worker is fenced by the attempt it claimed: once the lease is lost
        # and another attempt holds the run, nothing of this one reaches the record.
        self.attempt = self.buffer.attempt = self.execution.attempt
        self.renewed_at = time.monotonic()
        return True

    def supervise(self) -> str | None:
        """Start the sandbox, record its events and its end; the final status (None when the
        run was lost before its sandbox started)."""
        try:
            return self._supervise()
        except Exception:
            # Our failure, not the agent's: the run ends failed unless another attempt has it.
            logger.exception("supervising execution %s failed", self.execution_id)
            self._db(
                lambda: finish(
                    self.execution,
                    ExecutionStatus.FAILED,
                    reason="The worker failed while supervising the run",
                    error_type=ErrorType.SANDBOX_ERROR,
                    attempt=self.attempt,
                    from_states=HELD,
                ),
                "recording the failure",
            )
            raise
        finally:
            self._close_errands()

    def _supervise(self) -> str | None:
        execution = self.execution
        if self.ended_by is not None:  # lost, or the worker stops, before anything started
            return None
        mount = None
        if execution.session_id is not None:
            mount, refusal = self._db(
                lambda: task_mount(execution.session_id), "reading the session"
            )
            if mount is None:  # the user's to fix, not a platform failure: said as it is
                self._db(
                    lambda: finish(
                        execution,
                        ExecutionStatus.FAILED,
                        reason=refusal,
                        attempt=self.attempt,
                        from_states=HELD,
                    ),
                    "recording the refused start",
                )
                return ExecutionStatus.FAILED
        # Marked before the sandbox starts: a run whose agent may have started is never queued
        # again, so no agent runs twice.
        if not self._db(
            lambda: Execution.mark_sandbox_started(execution.pk, attempt=self.attempt),
            "marking the sandbox started",
        ):
            return None
        if self.ended_by is not None:  # lost, or the worker stops, before it started
            return None
        try:
            run = self._start(execution, mount)
        except Exception as exc:  # the sandbox could not start: not the agent's fault
            logger.exception("sandbox did not start for execution %s", execution.pk)
            reason = f"The sandbox could not start the run: {exc}"
            self._db(
                lambda: finish(
                    execution,
                    ExecutionStatus.FAILED,
                    reason=reason,
                    error_type=ErrorType.SANDBOX_ERROR,
                    attempt=self.attempt,
                    from_states=HELD,
                ),
                "recording the failed start",
            )
            return ExecutionStatus.FAILED
        with self.lock:
            self.run = run
            killed_meanwhile = self.ended_by is not None
        if killed_meanwhile:  # lost, or the worker stops, while it started
            run.kill()
        try:
            for event in self.run.events():
                self.buffer.add(event.type, event.data)
            outcome = self.run.wait()
        except BaseException:
            self.run.kill()
            raise
        try:  # controls nobody will read; what is left expires with the key
            RunControl(self.execution_id).forget()
        except TRANSIENT_ERRORS:
            pass
        return self._record_outcome(execution, outcome, self.buffer.take())

    def _start(self, execution: Execution, mount: SessionMount | None = None):
        """Start the run's sandbox: from the warm pool when the host keeps one, cold in the
        session's workspace for a task (`mount`)."""
        version = execution.version
        config = sandbox_config()
        backend = get_backend(version.sandbox_backend or None, config=config)
        limits = limits_for(
            version.manifest, timeout_seconds=execution.timeout_seconds, config=config
        )
        start = backend.start
        if mount is not None:
            start = partial(backend.start, workspace=mount)
        elif self.host.pool is not None:
            start = partial(self.host.pool.take, backend, **reuse_of(execution))
        return start(
            environment_of(version),
            version.entrypoint,
            execution.input,
            state=execution.initial_state,
            limits=limits,
            env_vars={str(k): str(v) for k, v in (execution.env or {}).items()},
            run_id=str(execution.pk),
        )

    def _record_outcome(self, execution: Execution, outcome, events: list) -> str:
        status = OUTCOME_STATUS.get(outcome.status, ExecutionStatus.FAILED)
        reason = outcome.error or ""
        error_type = outcome.error_type or ""
        # A run the worker killed ends `cancelled` in the sandbox; why it was killed decides.
        killed = status == ExecutionStatus.CANCELLED
        if killed and self.ended_by == Ended.PAUSE_LIMIT:
            status = ExecutionStatus.TIMED_OUT
            reason = f"paused longer than {settings.AIMOS_MAX_PAUSE_SECONDS} s"
        elif killed and self.ended_by == Ended.LEASE:
            status, error_type = ExecutionStatus.FAILED, ErrorType.LOST
            reason = "The worker lost its lease on the run (it could not reach the database)"
        elif killed and self.ended_by == Ended.SHUTDOWN:
            status, error_type = ExecutionStatus.FAILED, ErrorType.LOST
            reason = "The worker running this execution stopped"
        elif killed and self.ended_by == Ended.CANCEL:
            reason = "cancelled by the user"
        elif killed:
            status, error_type = ExecutionStatus.FAILED, ErrorType.SANDBOX_ERROR
            reason = "The worker lost control of the run"
        elif status == ExecutionStatus.TIMED_OUT:
            reason = reason or f"ran longer than {execution.timeout_seconds} s"
        elif status == ExecutionStatus.FAILED and not error_type:
            error_type = ErrorType.SANDBOX_ERROR
        self._db(
            lambda: finish(
                execution,
                status,
                reason=reason,
                output=outcome.output if status == ExecutionStatus.COMPLETED else None,
                error_type=error_type,
                duration_ms=outcome.duration_ms,
                peak_memory_mb=outcome.peak_memory_mb,
                cpu_ms=outcome.cpu_ms,
                attempt=self.attempt,
                from_states=HELD,
                events=events,
            ),
            "recording the outcome",
        )
        return status

    # --- called by the host's control thread -------------------------------------------------

    def flush_if_due(self) -> None:
        """Ask the errand thread to write the deltas that waited long enough."""
        if self.buffer.due() and not self.flush_asked:
            self.flush_asked = True
            self._errand(self._flush)

    def _flush(self) -> None:
        self.flush_asked = False
        try:
            self.buffer.flush_if_due()
        except Exception:  # without its record a run must not go on
            logger.exception("events of execution %s could not be written", self.execution_id)
            self._kill(Ended.CONTROL)

    def lose_lease(self, why: str) -> None:
        """The lease is lost (declared lost, or taken by another attempt) or could not be
        renewed for a whole lease: this attempt stops, and its writes are fenced off."""
        logger.warning("execution %s: %s; killing it", self.execution_id, why)
        self._kill(Ended.LEASE)

    def stop_for_shutdown(self) -> None:
        """The worker is stopping and cannot wait for the run any longer: its kill is issued
        (this returns at once; the host waits for the run to end)."""
        self._kill(Ended.SHUTDOWN)

    def check_pause_limit(self) -> None:
        if (
            self.paused_since is not None
            and time.monotonic() - self.paused_since > settings.AIMOS_MAX_PAUSE_SECONDS
            and self.ended_by is None
        ):
            self._kill(Ended.PAUSE_LIMIT)

    def apply(self, control: str) -> None:
        """Apply a control: a cancel at once (the kill goes on in a thread of its own), a pause
        or a resume on the errand thread."""
        if control == Control.CANCEL:
            self._kill(Ended.CANCEL)
        else:
            self._errand(partial(self._apply, control))

    def _apply(self, control: str) -> None:
        try:
            self._pause_or_resume(control)
        except Exception:  # a control that cannot be applied must not leave the run unwatched
            logger.exception("control %s of execution %s failed", control, self.execution_id)
            self._kill(Ended.CONTROL)

    def _pause_or_resume(self, control: str) -> None:
        if control == Control.PAUSE and self.paused_since is None:
            self.buffer.flush()
            self.run.pause()
            if self._db(
                lambda: Execution.mark_paused(self.execution_id, attempt=self.attempt), "pausing"
            ):
                self.paused_since = time.monotonic()
                self.buffer.add("run_paused", {})
                announce(self.execution_id)
            else:
                self.run.resume()
        elif control == Control.RESUME and self.paused_since is not None:
            self.run.resume()
            if self._db(
                lambda: Execution.mark_resumed(self.execution_id, attempt=self.attempt),
                "resuming",
            ):
                self.paused_since = None
                self.buffer.add("run_resumed", {})
                announce(self.execution_id)
