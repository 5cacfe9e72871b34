"""How a run ends: `finish` writes the terminal status and its terminal event in one
transaction, notes the outcome in the agent's log, tells the user's feed (and, from the
last run of a batch to end, the batch's end) and, once committed, wakes the requests waiting
for the run (`executions.waits`). Used by the worker, run control and the lost-run sweep.

What a user reads in `error_message` is the agent's own error or the platform's plain
account of the end (timed out, cancelled, lost…). A `sandbox_error` is the platform's
failure, and its text (a database message, a traceback of our code, a launcher's stderr) is
logged here, never shown: the user reads `SANDBOX_ERROR_MESSAGE`. U+0000 in an error text is
kept in the terminal event's data and becomes U+FFFD in the `error_message` column.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from agents.activity import log
from agents.choices import LogLevel, LogSource
from executions.batches import batch_summary
from executions.choices import TERMINAL_EVENTS, ErrorType, ExecutionStatus
from executions.events import record_events
from executions.models import Batch, Execution, text_column
from executions.waits import announce
from notifications import feed

logger = logging.getLogger(__name__)

SANDBOX_ERROR_MESSAGE = (
    "The platform could not complete this run (a sandbox error, not the agent's fault); "
    "the details are in the server's log."
)


def finish(
    execution: Execution,
    status: str,
    *,
    reason: str = "",
    from_states=None,
    output: Any = None,
    error_type: str = "",
    duration_ms: int | None = None,
    peak_memory_mb: float | None = None,
    cpu_ms: int | None = None,
    attempt: int | None = None,
    events: list[tuple[str, dict]] | None = None,
    expired_by=None,
) -> bool:
    """End the execution with `status` and its terminal event, atomically, after `events`
    (the run's last ones, not yet written). False (and no event) when the execution had
    already ended, or, with `attempt`, when another attempt holds it now."""
    if error_type == ErrorType.SANDBOX_ERROR and status != ExecutionStatus.COMPLETED:
        logger.error("execution %s ended with a sandbox error: %s", execution.pk, reason)
        reason = SANDBOX_ERROR_MESSAGE
    with transaction.atomic():
        ended = Execution.finish(
            execution.pk,
            status,
            from_states=from_states,
            output=output,
            error_message=text_column(reason) if status != ExecutionStatus.COMPLETED else "",
            error_type=error_type,
            duration_ms=duration_ms,
            peak_memory_mb=peak_memory_mb,
            cpu_ms=cpu_ms,
            attempt=attempt,
            expired_by=expired_by,
        )
        if not ended:
            return False
        # First of the hooks that run on commit: a request waiting for this end answers
        # before the feed and the webhooks are told.
        announce(execution.pk)
        if status == ExecutionStatus.COMPLETED:
            last = Execution.objects.values_list("last_seq", flat=True).get(pk=execution.pk)
            count = last + len(events or []) + 1
            data = {
                "output": output,
                "metrics": {
                    "duration_ms": duration_ms,
                    "cpu_ms": cpu_ms,
                    "peak_memory_mb": peak_memory_mb,
                    "events": count,
                },
            }
        elif status == ExecutionStatus.FAILED:
            data = {"error": reason, "error_type": error_type}
        else:
            data = {"reason": reason}
        record_events(
            execution.pk, [*(events or []), (TERMINAL_EVENTS[status], data)], attempt=attempt
        )
        _log_outcome(execution, status, reason, error_type)
        _notify_finished(execution, status, duration_ms)
    return True


def _notify_finished(execution: Execution, status: str, duration_ms: int | None) -> None:
    """Tell the user's feed that a run ended; a batch's last run also ends the batch.

    The batch row is locked first, so of two runs of a batch ending at once, the one that
    takes the lock second sees the other's end committed: exactly one announces the batch.
    """
    run = {
        "agent_id": str(execution.agent_id),
        "agent_name": execution.agent.name,
        "status": status,
        "duration_ms": duration_ms,
    }
    if execution.batch_id is None:
        feed.notify(
            execution.user_id, "execution_completed", {"execution_id": str(execution.pk), **run}
        )
        return
    batch = Batch.objects.select_for_update().get(pk=execution.batch_id)
    feed.notify(
        execution.user_id,
        "agent_completed",
        {"execution_id": str(batch.pk), "run_id": str(execution.pk), **run},
    )
    summary = batch_summary(batch)
    if summary["finished"]:
        feed.notify(
            execution.user_id,
            "execution_completed",
            {
                "execution_id": str(batch.pk),
                "total_agents": summary["total"],
                "successful": summary["completed"],
                "failed": summary["failed"],
                "success_rate": summary["success_rate"],
            },
        )


def _log_outcome(execution: Execution, status: str, reason: str, error_type: str) -> None:
    short = str(execution.pk)[:8]
    first_line = text_column(reason).splitlines()[0] if reason.strip() else ""
    message = f"Execution {short} {status}" + (f": {first_line}" if first_line else "")
    log(
        execution.agent,
        message[:500],
        source=LogSource.RUNTIME,
        level=LogLevel.INFO if status == ExecutionStatus.COMPLETED else LogLevel.ERROR,
        metadata={
            "execution_id": str(execution.pk),
            "status": status,
            "error_type": error_type or None,
        },
    )
