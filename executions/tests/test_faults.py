"""Runs under failing services: database connections terminated and Redis connections dropped
in the middle of a run (the live stack rides both out), and pending runs whose job was lost
on its way to a worker (queued again under the next attempt; the old job claims nothing)."""

from datetime import timedelta

import django_rq
import pytest
from django.db import connection
from django.utils import timezone
from rq.job import Job, JobStatus

from executions.choices import ExecutionStatus
from executions.jobs import enqueue_run, run_execution, run_job_id
from executions.models import Execution
from executions.recovery import sweep_lost_runs
from executions.tests.live import Client, deploy, wait_for_events, wait_for_status
from executions.tests.wsclient import ready_agent


def execute(client, agent_id, **body):
    response = client.post(f"/agents/{agent_id}/execute", json=body)
    assert response.status_code in (201, 202), response.text
    return response.json()


def assert_ran_once_without_gaps(client, execution_id: str) -> None:
    events = client.get(f"/executions/{execution_id}/events", params={"limit": 1000}).json()
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert [event["type"] for event in events].count("run_started") == 1
    assert events[-1]["type"] == "run_completed"
    ticks = [event["data"]["content"] for event in events if event["type"] == "content_delta"]
    assert ticks == [f"tick {n}\n" for n in range(1, len(ticks) + 1)]
    assert events[-1]["data"]["output"] == {"ticks": len(ticks)}


def terminate_database_connections() -> int:
    """Terminate every other backend on the test database: the web server's, the workers',
    the upkeep process's."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return len(cursor.fetchall())


def drop_redis_connections() -> int:
    """Close every other client of the live stack's Redis database (its web server, workers
    and upkeep process), as a Redis restart would."""
    redis = django_rq.get_connection("runs")
    mine = redis.client_id()
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    others = [c["id"] for c in redis.client_list() if int(c["db"]) == db and c["id"] != mine]
    for client_id in others:
        redis.client_kill_filter(_id=client_id)
    return len(others)


@pytest.mark.slow
@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates PostgreSQL backends")
def test_a_run_rides_out_its_database_connections_being_terminated(live, owner):
    client = Client(live, owner)
    run = execute(client, deploy(client, "slow"), input={"seconds": 3, "interval": 0.1})
    wait_for_events(client, run["id"], "content_delta", 3)

    assert terminate_database_connections() > 0

    ended = wait_for_status(client, run["id"], ["completed", "failed", "cancelled", "timed_out"])
    assert (ended["status"], ended["error_type"]) == ("completed", "")
    assert_ran_once_without_gaps(client, run["id"])


@pytest.mark.slow
def test_a_run_rides_out_redis_dropping_its_connections(live, owner):
    client = Client(live, owner)
    agent_id = deploy(client, "slow")
    run = execute(client, agent_id, input={"seconds": 3, "interval": 0.1})
    wait_for_events(client, run["id"], "content_delta", 3)

    assert drop_redis_connections() > 0

    ended = wait_for_status(client, run["id"], ["completed", "failed", "cancelled", "timed_out"])
    assert (ended["status"], ended["error_type"]) == ("completed", "")
    assert_ran_once_without_gaps(client, run["id"])
    # Control still reaches the worker afterwards.
    second = execute(client, agent_id, input={"seconds": 30, "interval": 0.1})
    wait_for_events(client, second["id"], "content_delta", 1)
    cancelled = client.post(f"/executions/{second['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"


# The sweeps below judge by a moment five minutes ahead, when the run (or delivery) made now is
# stale; rows are not backdated, so the upkeep of a live stack on the same database, judging
# by the real time, leaves them alone.
LATER = timedelta(minutes=5)


def sweep_later() -> dict:
    return sweep_lost_runs(now=timezone.now() + LATER)


@pytest.fixture
def stale_pending(owner, rq_queues):
    """A pending run queued for attempt 0."""
    agent = ready_agent(owner)
    execution = Execution.objects.create(
        agent=agent, version=agent.versions.get(), user=owner, input={}, timeout_seconds=30
    )
    enqueue_run(execution.pk, attempt=0)
    return execution


@pytest.mark.django_db(transaction=True)
def test_a_pending_run_whose_job_waits_in_its_queue_is_left_alone(stale_pending):
    assert sweep_later()["pending_requeued"] == 0
    assert Execution.objects.get(pk=stale_pending.pk).attempt == 0


@pytest.mark.django_db(transaction=True)
def test_a_pending_run_whose_job_was_taken_by_a_dead_worker_is_queued_again(stale_pending):
    queue = django_rq.get_queue("runs")
    old_id = run_job_id(stale_pending.pk, 0)
    # What a worker killed after taking the job leaves: the job out of the queue, started
    # long ago, and the run never claimed.
    job = Job.fetch(old_id, connection=queue.connection)
    queue.remove(job)
    job.set_status(JobStatus.STARTED)
    job.started_at = timezone.now()
    job.save()

    assert sweep_later()["pending_requeued"] == 1

    row = Execution.objects.get(pk=stale_pending.pk)
    assert (row.status, row.attempt) == (ExecutionStatus.PENDING, 1)
    assert queue.job_ids == [run_job_id(stale_pending.pk, 1)]
    # The old job, should it turn up, claims nothing.
    assert run_execution(str(stale_pending.pk), "0") is None
    row = Execution.objects.get(pk=stale_pending.pk)
    assert (row.status, row.attempt, row.worker) == (ExecutionStatus.PENDING, 1, "")
    # Nor is the run queued a second time while its new job waits.
    assert sweep_later()["pending_requeued"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_pending_run_whose_job_vanished_is_queued_again(stale_pending):
    queue = django_rq.get_queue("runs")
    Job.fetch(run_job_id(stale_pending.pk, 0), connection=queue.connection).delete()

    assert sweep_later()["pending_requeued"] == 1

    assert Execution.objects.get(pk=stale_pending.pk).attempt == 1
    assert queue.job_ids == [run_job_id(stale_pending.pk, 1)]
