"""Run control: pause, resume and cancel a run.

The API records the wish on the row (`Execution.request_control`) and sends it through
`RunControl`, the Redis list `aimos:control:<id>` that the worker holding the run reads
(`executions.supervisor`); both sides speak through this one class. A pending run is
cancelled here at once, since no worker holds it yet. A request then waits for the worker to
change the run (`executions.waits`).
"""

from __future__ import annotations

import django_rq
from django.conf import settings

from core.errors import Conflict
from executions.choices import Control, ExecutionStatus
from executions.models import Execution
from executions.outcomes import finish
from executions.waits import wait_until


class RunControl:
    """The control messages of one run, on a Redis list: the API sends, the worker receives
    (`receive_any`: the host of a run worker waits on the lists of all its runs at once)."""

    KEY = "aimos:control:{}"

    def __init__(self, execution_id) -> None:
        self.key = self.KEY.format(execution_id)
        self.connection = django_rq.get_connection("runs")

    def send(self, control: str) -> None:
        """Queue a control for the worker; it expires with the longest a run can last."""
        self.connection.rpush(self.key, control)
        self.connection.expire(
            self.key, settings.AIMOS_MAX_TIMEOUT_SECONDS + settings.AIMOS_MAX_PAUSE_SECONDS
        )

    @classmethod
    def receive_any(cls, connection, execution_ids, timeout: float) -> tuple[str, str] | None:
        """The next control of any of the runs, as (execution id, control), waiting up to
        `timeout` seconds; None when none came."""
        keys = [cls.KEY.format(execution_id) for execution_id in execution_ids]
        message = connection.blpop(keys, timeout=timeout)
        if not message:
            return None
        return message[0].decode().removeprefix(cls.KEY.format("")), message[1].decode()

    def forget(self) -> None:
        """Drop controls nobody will read any more (the run has ended)."""
        self.connection.delete(self.key)


def cancel_execution(execution: Execution, *, wait: float = 30.0) -> Execution:
    """Cancel: a pending run ends before it starts; a running one ends when every process of
    it is gone (the worker kills the sandbox, then records `cancelled`)."""
    if execution.is_terminal:
        raise Conflict(f"The execution already ended ({execution.status})")
    if finish(
        execution,
        ExecutionStatus.CANCELLED,
        reason="cancelled before it started",
        from_states=[ExecutionStatus.PENDING],
    ):
        execution.refresh_from_db()
        return execution
    if not Execution.request_control(execution.pk, Control.CANCEL):
        execution.refresh_from_db()
        if execution.is_terminal:
            raise Conflict(f"The execution already ended ({execution.status})")
        raise Conflict(f"The execution is {execution.status} and cannot be cancelled now")
    RunControl(execution.pk).send(Control.CANCEL)
    return wait_until(execution, lambda e: e.is_terminal, wait)


def pause_execution(execution: Execution, *, wait: float = 10.0) -> Execution:
    if not Execution.request_control(execution.pk, Control.PAUSE):
        execution.refresh_from_db()
        raise Conflict(f"Only a running execution can be paused; this one is {execution.status}")
    RunControl(execution.pk).send(Control.PAUSE)
    return wait_until(execution, lambda e: e.status != ExecutionStatus.RUNNING, wait)


def resume_execution(execution: Execution, *, wait: float = 10.0) -> Execution:
    if not Execution.request_control(execution.pk, Control.RESUME):
        execution.refresh_from_db()
        raise Conflict(f"Only a paused execution can be resumed; this one is {execution.status}")
    RunControl(execution.pk).send(Control.RESUME)
    return wait_until(execution, lambda e: e.status != ExecutionStatus.PAUSED, wait)
