"""A request waiting for a run is woken by the run's announcement, not by polling its row; a
lost announcement, or no Redis at all, costs one re-read's delay, never the answer."""

from __future__ import annotations

import socket
import threading

import django_rq
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from core import waits as core_waits
from executions import control, waits
from executions.choices import Control, ExecutionStatus
from executions.control import RunControl
from executions.models import Execution
from executions.outcomes import finish
from executions.tests.runs import Background
from executions.tests.wsclient import ready_agent

pytestmark = pytest.mark.django_db(transaction=True)

LONG = 60.0
HOUR = 3600.0


@pytest.fixture
def running(owner) -> Execution:
    agent = ready_agent(owner)
    execution = Execution.objects.create(
        agent=agent, version=agent.versions.get(), user=owner, input={}, timeout_seconds=30
    )
    assert Execution.claim(execution.pk, worker="test:1", lease_seconds=30)
    execution.refresh_from_db()
    return execution


@pytest.fixture
def nowhere():
    """The address of a Redis that refuses connections: a port this test holds, not listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{held.getsockname()[1]}/0"


def runs_redis_at(url: str) -> dict:
    return {**settings.RQ_QUEUES, "runs": {**settings.RQ_QUEUES["runs"], "URL": url}}


class Waiter(Background):
    """A request waiting in a thread of its own until `holds(execution)`, counting its reads of
    the database; `first_read` is set once it has subscribed and read the run."""

    def __init__(self, execution: Execution, holds, seconds: float) -> None:
        self.first_read = threading.Event()
        self.reads: int | None = None

        def done(current: Execution) -> bool:
            self.first_read.set()
            return holds(current)

        def wait() -> Execution:
            with CaptureQueriesContext(connection) as reads:
                answer = waits.wait_until(execution, done, seconds)
            self.reads = len(reads)
            return answer

        super().__init__(wait)

    def waiting(self) -> Waiter:
        self.start()
        assert self.first_read.wait(LONG), "the waiter never read the run"
        return self


def ended(execution: Execution) -> bool:
    return execution.is_terminal


def test_a_waiter_is_woken_by_the_end_of_the_run(running, monkeypatch):
    monkeypatch.setattr(core_waits, "RECHECK_SECONDS", HOUR)  # only the announcement can wake it
    waiter = Waiter(running, ended, HOUR).waiting()

    finish(running, ExecutionStatus.COMPLETED, output={"answer": 42})

    execution = waiter.result(timeout=LONG)  # long before its deadline or any re-read
    assert execution.status == ExecutionStatus.COMPLETED
    assert execution.output == {"answer": 42}
    assert waiter.reads == 2  # the first read, and one when the announcement came


def test_a_lost_announcement_still_ends_the_wait_at_the_next_re_read(running, nowhere, caplog):
    waiter = Waiter(running, ended, HOUR).waiting()

    with override_settings(RQ_QUEUES=runs_redis_at(nowhere)):
        assert finish(running, ExecutionStatus.COMPLETED, output=1)

    assert "could not announce a change of execution" in caplog.text
    execution = waiter.result(timeout=LONG)
    assert execution.status == ExecutionStatus.COMPLETED
    # The first read, and the re-reads every RECHECK_SECONDS until one saw the end.
    assert waiter.reads >= 2


def test_a_waiter_without_redis_still_sees_the_end(running, nowhere, settings, caplog):
    settings.RQ_QUEUES = runs_redis_at(nowhere)
    waiter = Waiter(running, ended, HOUR).waiting()

    finish(running, ExecutionStatus.COMPLETED, output=1)

    execution = waiter.result(timeout=LONG)
    assert "without announcements" in caplog.text
    assert execution.status == ExecutionStatus.COMPLETED
    assert waiter.reads >= 2


def test_a_wait_that_runs_out_answers_the_run_as_it_is(running):
    execution = waits.wait_until(running, ended, 0.1)

    assert execution.status == ExecutionStatus.RUNNING


def act_as_worker(execution_id, control_expected: str, apply) -> None:
    """What the worker holding the run does: it receives the control, then changes the run
    and announces the change."""
    connection = django_rq.get_connection("runs")
    received = RunControl.receive_any(connection, [str(execution_id)], LONG)
    assert received == (str(execution_id), control_expected)
    apply(execution_id)


def pause(execution_id) -> None:
    assert Execution.mark_paused(execution_id)
    waits.announce(execution_id)


def resume(execution_id) -> None:
    assert Execution.mark_resumed(execution_id)
    waits.announce(execution_id)


def cancel(execution_id) -> None:
    execution = Execution.objects.get(pk=execution_id)
    assert finish(execution, ExecutionStatus.CANCELLED, reason="cancelled by its owner")


@pytest.mark.parametrize(
    ("request_control", "control_sent", "apply", "paused_before", "expected"),
    [
        (control.pause_execution, Control.PAUSE, pause, False, ExecutionStatus.PAUSED),
        (control.resume_execution, Control.RESUME, resume, True, ExecutionStatus.RUNNING),
        (control.cancel_execution, Control.CANCEL, cancel, False, ExecutionStatus.CANCELLED),
    ],
    ids=["pause", "resume", "cancel"],
)
def test_a_control_request_answers_the_state_the_worker_announced(
    running, request_control, control_sent, apply, paused_before, expected
):
    if paused_before:
        assert Execution.mark_paused(running.pk)
    worker = Background(lambda: act_as_worker(running.pk, control_sent, apply))
    worker.start()

    execution = request_control(running, wait=LONG)

    worker.result()
    assert execution.status == expected
