"""A worker whose attempt was superseded writes nothing: every supervisor-side write is a
conditional update that names the attempt it claimed."""

import pytest

from executions.choices import ExecutionStatus
from executions.events import record_events
from executions.models import Execution, ExecutionEvent
from executions.outcomes import finish
from executions.supervisor import EventBuffer
from executions.tests.wsclient import ready_agent

pytestmark = pytest.mark.django_db


@pytest.fixture
def taken_over(owner):
    """A run claimed by attempt 1, whose lease was lost: requeued and claimed by attempt 2."""
    agent = ready_agent(owner)
    execution = Execution.objects.create(
        agent=agent, version=agent.versions.get(), user=owner, input={}, timeout_seconds=30
    )
    assert Execution.claim(execution.pk, worker="old:1", lease_seconds=30)
    record_events(execution.pk, [("run_started", {})], attempt=1)
    assert Execution.requeue(execution.pk)
    assert Execution.claim(execution.pk, worker="new:2", lease_seconds=30)
    execution.refresh_from_db()
    assert execution.attempt == 2
    return execution


def snapshot(execution):
    row = Execution.objects.get(pk=execution.pk)
    return (
        row.status,
        row.worker,
        row.last_seq,
        row.lease_expires_at,
        row.sandbox_started,
        row.output,
        ExecutionEvent.objects.filter(execution=execution).count(),
    )


def test_a_stale_attempt_writes_no_event(taken_over):
    before = snapshot(taken_over)

    assert record_events(taken_over.pk, [("log", {"message": "late"})], attempt=1) == []
    buffer = EventBuffer(taken_over.pk, attempt=1)
    buffer.add("log", {"message": "late"})
    buffer.flush()

    assert snapshot(taken_over) == before


def test_a_stale_attempt_cannot_record_the_outcome(taken_over):
    before = snapshot(taken_over)

    ended = finish(taken_over, ExecutionStatus.COMPLETED, output={"stale": True}, attempt=1)

    assert ended is False
    assert snapshot(taken_over) == before


def test_a_stale_attempt_cannot_renew_the_lease_pause_resume_or_mark_the_sandbox(taken_over):
    before = snapshot(taken_over)

    assert Execution.renew_leases({taken_over.pk: 1}, lease_seconds=600) == set()
    assert not Execution.mark_sandbox_started(taken_over.pk, attempt=1)
    assert not Execution.mark_paused(taken_over.pk, attempt=1)
    Execution.objects.filter(pk=taken_over.pk).update(status=ExecutionStatus.PAUSED)
    assert not Execution.mark_resumed(taken_over.pk, attempt=1)
    Execution.objects.filter(pk=taken_over.pk).update(status=ExecutionStatus.RUNNING)

    assert snapshot(taken_over) == before


def test_the_current_attempt_still_writes(taken_over):
    assert record_events(taken_over.pk, [("log", {"message": "mine"})], attempt=2)
    assert Execution.renew_leases({taken_over.pk: 2}, lease_seconds=30) == {str(taken_over.pk)}
    assert finish(taken_over, ExecutionStatus.COMPLETED, output={"ok": 1}, attempt=2)

    row = Execution.objects.get(pk=taken_over.pk)
    assert (row.status, row.output, row.last_seq) == (ExecutionStatus.COMPLETED, {"ok": 1}, 3)
