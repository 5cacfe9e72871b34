"""Waiting for a run to change (`core.waits`): a request that waits for a run (execute with
`wait`, chat and the compatible synchronous routes, pause, resume and cancel waiting for the
worker) blocks on `aimos:run:<id>`, and whoever changes the run in a way a waiter cares about
(it ends, it is paused or resumed) calls `announce`."""

from __future__ import annotations

from collections.abc import Callable

from core.waits import RowWaits
from executions.models import Execution

RUNS = RowWaits("execution", "aimos:run:{}", "runs")
announce = RUNS.announce


def wait_until(
    execution: Execution, done: Callable[[Execution], bool], seconds: float
) -> Execution:
    """The execution, read again, once `done(execution)` holds, or as it is after
    `seconds` (Execution.DoesNotExist once it is gone)."""
    waited = RUNS.wait_until(execution, done, seconds)
    if waited is None:
        raise Execution.DoesNotExist(f"execution {execution.pk} is gone")
    return waited
