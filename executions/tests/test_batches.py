"""Batches: `POST execute` runs several agents at once or one after another; `GET batches/{id}`."""

import pytest

from agents import services as agents
from executions.models import Execution
from executions.tests.runs import API, deploy, queued_runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def start(client, **body):
    return client.post(f"{API}/execute", body, format="json")


def test_a_parallel_batch_runs_every_agent_and_counts_the_outcomes(
    owner, owner_api, drain_queues, rq_queues
):
    echo = deploy(owner, "echo", drain_queues)
    broken = deploy(owner, "broken", drain_queues)

    response = start(
        owner_api, agent_ids=[str(echo.pk), str(broken.pk)], input={"x": 1}, timeout_seconds=5
    )

    assert response.status_code == 202
    started = response.json()
    assert set(started) == {
        "execution_id",
        "status",
        "started_at",
        "agent_count",
        "estimated_duration",
    }
    assert started["status"] == "started"
    assert started["agent_count"] == 2
    assert started["estimated_duration"] == 5  # no history yet: the timeout
    assert queued_runs(rq_queues) == 2
    drain_queues()

    batch = owner_api.get(f"{API}/batches/{started['execution_id']}").json()
    assert batch["total"] == 2
    assert batch["completed"] == 1
    assert batch["failed"] == 1
    assert batch["active"] == 0
    assert batch["finished"] is True
    assert batch["status"] == "completed"
    assert batch["success_rate"] == 50.0
    assert batch["parallel"] is True
    runs = {run["agent_name"]: run for run in batch["executions"]}
    assert runs["echo"]["output"] == {"x": 1}
    assert runs["broken"]["status"] == "failed"
    assert {run["batch_id"] for run in batch["executions"]} == {started["execution_id"]}


def test_a_sequential_batch_runs_one_agent_after_the_other(
    owner, owner_api, drain_queues, rq_queues
):
    first = deploy(owner, "echo", drain_queues, name="first")
    second = deploy(owner, "echo", drain_queues, name="second")

    started = start(
        owner_api, agent_ids=[str(first.pk), str(second.pk)], parallel=False, input=1
    ).json()

    assert queued_runs(rq_queues) == 1  # the second waits for the first
    drain_queues()
    batch = owner_api.get(f"{API}/batches/{started['execution_id']}").json()
    assert batch["parallel"] is False
    assert (batch["total"], batch["completed"], batch["success_rate"]) == (2, 2, 100.0)
    one, two = (
        Execution.objects.get(agent=agent, batch_id=batch["id"]) for agent in (first, second)
    )
    assert two.started_at >= one.finished_at


def test_a_batch_without_agent_ids_runs_every_ready_agent_of_the_caller(
    owner, other, owner_api, drain_queues
):
    deploy(owner, "echo", drain_queues)
    deploy(owner, "tools", drain_queues)
    agents.create_agent(owner, name="draft")
    deploy(other, "echo", drain_queues)

    started = start(owner_api).json()

    assert started["agent_count"] == 2
    runs = Execution.objects.filter(batch_id=started["execution_id"])
    assert sorted(run.agent.name for run in runs) == ["echo", "tools"]
    assert {run.user_id for run in runs} == {owner.pk}


def test_the_estimate_learns_from_past_runs(owner, owner_api, drain_queues):
    echo = deploy(owner, "echo", drain_queues)
    start(owner_api, agent_ids=[str(echo.pk)], timeout_seconds=8)
    drain_queues()

    estimate = start(owner_api, agent_ids=[str(echo.pk)], timeout_seconds=8).json()

    assert estimate["estimated_duration"] == 1  # echo ran in well under a second


def test_a_batch_with_no_ready_agent_is_a_409(owner, owner_api):
    agents.create_agent(owner, name="draft")

    response = start(owner_api)

    assert response.status_code == 409
    assert not Execution.objects.exists()


def test_a_batch_naming_a_draft_agent_starts_nothing(owner, owner_api, drain_queues):
    echo = deploy(owner, "echo", drain_queues)
    draft = agents.create_agent(owner, name="draft")

    response = start(owner_api, agent_ids=[str(echo.pk), str(draft.pk)])

    assert response.status_code == 409
    assert not Execution.objects.exists()


@pytest.mark.parametrize("agent_ids", [["not-a-uuid"], "nope"])
def test_bad_agent_ids_are_a_400(owner_api, agent_ids):
    response = start(owner_api, agent_ids=agent_ids)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("agent_ids")
