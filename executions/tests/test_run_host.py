"""Many runs in one worker process: the run worker's host supervises them at once in threads,
each with its own lease, events and controls; one stop ends them all."""

import pytest

from executions.host import RunHost
from executions.models import Execution, ExecutionEvent
from executions.supervisor import Supervisor
from executions.tests import runs
from executions.tests.live import Client, deploy, wait_for_events, wait_for_status
from sandbox.confinement import pids_of_uid
from sandbox.warm import WarmPool

pytestmark = pytest.mark.slow

TERMINAL = ["completed", "failed", "cancelled", "timed_out"]


def test_twenty_sleeping_runs_share_one_worker_and_all_complete_without_gaps(live, owner):
    client = Client(live, owner)
    agent_id = deploy(client, "slow")
    ids = []
    for _ in range(20):
        response = client.post(
            f"/agents/{agent_id}/execute", json={"input": {"seconds": 4, "interval": 0.5}}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    ended = [wait_for_status(client, execution_id, TERMINAL, timeout=120) for execution_id in ids]

    assert {run["status"] for run in ended} == {"completed"}
    for execution_id in ids:
        events = client.get(f"/executions/{execution_id}/events", params={"limit": 1000}).json()
        assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
        assert [event["type"] for event in events].count("content_delta") == 8
    rows = Execution.objects.filter(pk__in=ids)
    # One worker process held them all, many at once: at the start of some run, at least
    # half of them were running.
    assert len({row.worker for row in rows}) == 1
    running_at = [
        sum(other.started_at <= row.started_at < other.finished_at for other in rows)
        for row in rows
    ]
    assert max(running_at) >= 10, running_at


def test_controls_reach_each_of_several_runs_held_by_one_worker(live, owner):
    client = Client(live, owner)
    agent_id = deploy(client, "slow")
    ids = [
        client.post(
            f"/agents/{agent_id}/execute", json={"input": {"seconds": 30, "interval": 0.1}}
        ).json()["id"]
        for _ in range(3)
    ]
    for execution_id in ids:
        wait_for_events(client, execution_id, "content_delta", 1)
    paused, cancelled, untouched = ids

    assert client.post(f"/executions/{paused}/pause").json()["status"] == "paused"
    assert client.post(f"/executions/{cancelled}/cancel").json()["status"] == "cancelled"
    assert client.get(f"/executions/{untouched}").json()["status"] == "running"
    assert client.post(f"/executions/{paused}/resume").json()["status"] == "running"
    for execution_id in (paused, untouched):
        assert client.post(f"/executions/{execution_id}/cancel").json()["status"] == "cancelled"
    rows = Execution.objects.filter(pk__in=ids)
    assert len({row.worker for row in rows}) == 1


@pytest.mark.django_db(transaction=True)
def test_one_stop_ends_every_run_the_host_holds(owner, owner_api, drain_queues):
    slow = runs.deploy(owner, "slow", drain_queues)
    ids = [
        runs.execute(owner_api, slow.pk, input={"seconds": 60, "interval": 0.1}).json()["id"]
        for _ in range(3)
    ]
    # The host of a run worker, in this process (its database work on the runs' own threads).
    host = RunHost(len(ids), pool=WarmPool(per_key=1)).start()
    supervisors = [Supervisor(execution_id) for execution_id in ids]
    for supervisor in supervisors:
        assert host.adopt(supervisor) == "supervising"
    deltas = ExecutionEvent.objects.filter(execution__in=ids, type="content_delta")
    runs.wait_until(
        lambda: deltas.values("execution").distinct().count() == len(ids),
        message="a delta of every run",
    )

    host.stop(grace=0)

    assert host.runs == {}
    ended = Execution.objects.filter(pk__in=ids)
    assert [(row.status, row.error_type) for row in ended] == [("failed", "lost")] * len(ids)
    assert {row.error_message for row in ended} == {"The worker running this execution stopped"}
    assert [pids_of_uid(supervisor.run.uid) for supervisor in supervisors] == [[]] * len(ids)
