"""The worker's side of a run: claim it, start the sandbox, record every event, apply the
user's controls, hold the lease, and record how it ended.

Threads: the job's thread reads the sandbox's events; a control thread waits for control
messages on Redis (pause, resume, cancel), renews the lease, flushes buffered deltas and
enforces the longest pause. Every process of the run is gone before a terminal status is
written.

A database or Redis that goes away for a moment (a restart, a terminated connection) is
ridden out (`core.transient`) for up to one lease: writes are tried again, controls wait in
their list. A worker that cannot renew its lease for that long kills the run, since the
lost-run sweep will soon declare it lost. Only the user's cancel ends a run `cancelled`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from django.conf import settings

from agents.builds import environment_of
from core.sandbox_settings import sandbox_config
from core.transient import TRANSIENT_ERRORS, reconnect, retrying
from executions.choices import Control, ErrorType, ExecutionStatus
from executions.control import RunControl
from executions.events import record_events
from executions.models import Execution
from executions.outcomes import finish
from sandbox import get_backend, limits_for

logger = logging.getLogger(__name__)

DELTA = "content_delta"
FLUSH_SECONDS = 0.05
FLUSH_SIZE = 64

OUTCOME_STATUS = {
    "completed": ExecutionStatus.COMPLETED,
    "failed": ExecutionStatus.FAILED,
    "timed_out": ExecutionStatus.TIMED_OUT,
    "cancelled": ExecutionStatus.CANCELLED,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class EventBuffer:
    """Events on their way to the database: deltas are written in batches (one write per
    batch), anything else at once, in order."""

    def __init__(self, execution_id, attempt: int | None = None) -> None:
        self.execution_id = execution_id
        self.attempt = attempt
        self.pending: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.first_pending_at = 0.0

    def add(self, kind: str, data: dict) -> None:
        with self.lock:
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

    def flush_if_due(self) -> None:
        with self.lock:
            if self.pending and time.monotonic() - self.first_pending_at >= FLUSH_SECONDS:
                self._write()

    def _write(self) -> None:
        if self.pending:
            items, self.pending = self.pending, []
            retrying(
                lambda: record_events(self.execution_id, items, attempt=self.attempt),
                seconds=settings.AIMOS_RUN_LEASE_SECONDS,
                what=f"recording events of execution {self.execution_id}",
            )


class Ended:
    """Why the worker itself killed a run (an outcome of `cancelled` says only that it was
    killed)."""

    CANCEL = "cancel"
    PAUSE_LIMIT = "pause_limit"
    LEASE = "lease"
    CONTROL = "control"


class Supervisor:
    def __init__(self, execution_id, *, queued: int | None = None) -> None:
        self.execution_id = execution_id
        self.queued = queued
        self.buffer = EventBuffer(execution_id)
        self.run = None
        self.stop = threading.Event()
        self.ended_by: str | None = None
        self.paused_since: float | None = None
        self.attempt: int | None = None

    def _retrying(self, call, what: str):
        return retrying(
            call,
            seconds=settings.AIMOS_RUN_LEASE_SECONDS,
            what=f"{what} (execution {self.execution_id})",
        )

    def _kill(self, why: str) -> None:
        if self.ended_by is None:
            self.ended_by = why
        self.run.kill()

    # --- the job -----------------------------------------------------------------------------

    def execute(self) -> str | None:
        """Run the execution if it still waits for this job; returns its final status (None
        when another worker or job has it, or it was cancelled before it started)."""
        lease = settings.AIMOS_RUN_LEASE_SECONDS
        claimed = self._retrying(
            lambda: Execution.claim(
                self.execution_id, worker=worker_name(), lease_seconds=lease, queued=self.queued
            ),
            "claiming",
        )
        if not claimed:
            return None
        try:
            return self._supervise()
        except Exception:
            # Our failure, not the agent's: the run ends failed unless another attempt has it.
            logger.exception("supervising execution %s failed", self.execution_id)
            if self.attempt is not None:
                self._retrying(
                    lambda: finish(
                        Execution.objects.select_related("agent").get(pk=self.execution_id),
                        ExecutionStatus.FAILED,
                        reason="The worker failed while supervising the run",
                        error_type=ErrorType.SANDBOX_ERROR,
                        attempt=self.attempt,
                    ),
                    "recording the failure",
                )
            raise

    def _supervise(self) -> str | None:
        execution = self._retrying(
            lambda: Execution.objects.select_related("agent", "version").get(pk=self.execution_id),
            "reading the run",
        )
        # Every write of this worker is fenced by the attempt it claimed: once the lease is lost
        # and another attempt holds the run, nothing of this one reaches the record.
        self.attempt = self.buffer.attempt = execution.attempt
        # Marked before the sandbox starts: a run whose agent may have started is never queued
        # again, so no agent runs twice.
        if not self._retrying(
            lambda: Execution.mark_sandbox_started(execution.pk, attempt=self.attempt),
            "marking the sandbox started",
        ):
            return None
        self.buffer.add(
            "run_started",
            {
                "run_id": str(execution.pk),
                "agent_id": str(execution.agent_id),
                "version": execution.version.label,
            },
        )
        try:
            self.run = self._start(execution)
        except Exception as exc:  # the sandbox could not start: not the agent's fault
            logger.exception("sandbox did not start for execution %s", execution.pk)
            reason = f"The sandbox could not start the run: {exc}"
            self._retrying(
                lambda: finish(
                    execution,
                    ExecutionStatus.FAILED,
                    reason=reason,
                    error_type=ErrorType.SANDBOX_ERROR,
                    attempt=self.attempt,
                ),
                "recording the failed start",
            )
            return ExecutionStatus.FAILED
        control = threading.Thread(
            target=self._control_loop, name=f"control-{execution.pk}", daemon=True
        )
        control.start()
        try:
            for event in self.run.events():
                self.buffer.add(event.type, event.data)
            outcome = self.run.wait()
        except BaseException:
            self.run.kill()
            raise
        finally:
            self.stop.set()
            controls = RunControl(self.execution_id)
            try:  # wakes the control thread at once; without Redis it wakes within 0.2 s
                controls.wake()
            except TRANSIENT_ERRORS:
                pass
            control.join()
            self.buffer.flush()
            try:  # what is left expires with the key
                controls.forget()
            except TRANSIENT_ERRORS:
                pass
        return self._record_outcome(execution, outcome)

    def _start(self, execution: Execution):
        version = execution.version
        config = sandbox_config()
        backend = get_backend(version.sandbox_backend or None, config=config)
        limits = limits_for(
            version.manifest, timeout_seconds=execution.timeout_seconds, config=config
        )
        return backend.start(
            environment_of(version),
            version.entrypoint,
            execution.input,
            state=execution.initial_state,
            limits=limits,
            env_vars={str(k): str(v) for k, v in (execution.env or {}).items()},
            run_id=str(execution.pk),
        )

    def _record_outcome(self, execution: Execution, outcome) -> str:
        status = OUTCOME_STATUS.get(outcome.status, ExecutionStatus.FAILED)
        reason = outcome.error or ""
        error_type = outcome.error_type or ""
        if self.ended_by == Ended.PAUSE_LIMIT:
            status = ExecutionStatus.TIMED_OUT
            reason = f"paused longer than {settings.AIMOS_MAX_PAUSE_SECONDS} s"
        elif self.ended_by == Ended.LEASE:
            status, error_type = ExecutionStatus.FAILED, ErrorType.LOST
            reason = "The worker lost its lease on the run (it could not reach the database)"
        elif status == ExecutionStatus.CANCELLED and self.ended_by == Ended.CANCEL:
            reason = "cancelled by the user"
        elif status == ExecutionStatus.CANCELLED:  # killed, but not by the user
            status, error_type = ExecutionStatus.FAILED, ErrorType.SANDBOX_ERROR
            reason = "The worker lost control of the run"
        elif status == ExecutionStatus.TIMED_OUT:
            reason = reason or f"ran longer than {execution.timeout_seconds} s"
        elif status == ExecutionStatus.FAILED and not error_type:
            error_type = ErrorType.SANDBOX_ERROR
        self._retrying(
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
            ),
            "recording the outcome",
        )
        return status

    # --- the control thread -------------------------------------------------------------------

    def _control_loop(self) -> None:
        controls = RunControl(self.execution_id)
        lease = settings.AIMOS_RUN_LEASE_SECONDS
        renew_every = max(1.0, lease / 3)
        renewed = next_renewal = time.monotonic()
        next_renewal += renew_every
        try:
            while not self.stop.is_set():
                try:
                    message = controls.receive(timeout=0.1)
                except TRANSIENT_ERRORS:  # Redis restarting: the controls wait in their list
                    self.stop.wait(0.2)
                    message = None
                if message:
                    self._apply(message)
                self.buffer.flush_if_due()
                now = time.monotonic()
                if now >= next_renewal:
                    try:
                        held = Execution.renew_lease(
                            self.execution_id, lease_seconds=lease, attempt=self.attempt
                        )
                    except TRANSIENT_ERRORS:
                        reconnect()
                        held = None
                    if held is False:
                        # The lease is lost (the run was declared lost or another attempt
                        # took it): this attempt stops, and its writes are fenced off.
                        logger.warning("execution %s: lease lost, killing", self.execution_id)
                        self._kill(Ended.LEASE)
                        return
                    if held:
                        renewed, next_renewal = now, now + renew_every
                    elif now - renewed >= lease:  # the sweep may declare it lost any moment
                        logger.warning("execution %s: no lease, killing", self.execution_id)
                        self._kill(Ended.LEASE)
                        return
                    else:
                        next_renewal = now + 0.2
                if (
                    self.paused_since is not None
                    and time.monotonic() - self.paused_since > settings.AIMOS_MAX_PAUSE_SECONDS
                    and self.ended_by is None
                ):
                    self._kill(Ended.PAUSE_LIMIT)
        except Exception:  # without its control thread a run must not go on unwatched
            logger.exception("control of execution %s failed; killing the run", self.execution_id)
            self._kill(Ended.CONTROL)
        finally:
            controls.close()

    def _apply(self, control: str) -> None:
        if control == Control.CANCEL:
            self._kill(Ended.CANCEL)
        elif control == Control.PAUSE and self.paused_since is None:
            self.buffer.flush()
            self.run.pause()
            if self._retrying(
                lambda: Execution.mark_paused(self.execution_id, attempt=self.attempt), "pausing"
            ):
                self.paused_since = time.monotonic()
                self.buffer.add("run_paused", {})
            else:
                self.run.resume()
        elif control == Control.RESUME and self.paused_since is not None:
            self.run.resume()
            if self._retrying(
                lambda: Execution.mark_resumed(self.execution_id, attempt=self.attempt),
                "resuming",
            ):
                self.paused_since = None
                self.buffer.add("run_resumed", {})
