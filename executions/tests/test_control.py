"""Run control through the API: what each state refuses, and cancel before the start.

Pause/resume/cancel of a live run are exercised against the live stack (test_live_runs)."""

import pytest

from executions.models import Execution
from executions.tests.runs import API, Background, deploy, events, execute, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def control(client, execution_id, what: str):
    return client.post(f"{API}/executions/{execution_id}/{what}")


@pytest.fixture
def echo(owner, drain_queues):
    return deploy(owner, "echo", drain_queues)


@pytest.fixture
def pending(owner_api, echo) -> dict:
    return execute(owner_api, echo.pk, input="x").json()


@pytest.fixture
def completed(owner_api, echo, drain_queues) -> dict:
    run = execute(owner_api, echo.pk, input="x").json()
    drain_queues()
    assert Execution.objects.get(pk=run["id"]).status == "completed"
    return run


@pytest.mark.parametrize("what", ["pause", "resume"])
def test_a_pending_run_cannot_be_paused_or_resumed(owner_api, pending, what):
    response = control(owner_api, pending["id"], what)

    assert response.status_code == 409
    assert "pending" in response.json()["detail"]
    assert Execution.objects.get(pk=pending["id"]).status == "pending"


@pytest.mark.parametrize("what", ["pause", "resume", "cancel"])
def test_a_finished_run_refuses_every_control(owner_api, completed, what):
    response = control(owner_api, completed["id"], what)

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert Execution.objects.get(pk=completed["id"]).status == "completed"


def test_a_running_run_cannot_be_resumed(owner, owner_api, drain_queues):
    slow = deploy(owner, "slow", drain_queues)
    run = execute(owner_api, slow.pk, input={"seconds": 2, "interval": 0.1}).json()

    def resume_once_running():
        wait_until(lambda: Execution.objects.get(pk=run["id"]).status == "running")
        return control(owner_api, run["id"], "resume")

    request = Background(resume_once_running)
    request.start()
    drain_queues()
    response = request.result()

    assert response.status_code == 409
    assert "running" in response.json()["detail"]
    assert Execution.objects.get(pk=run["id"]).status == "completed"


def test_cancel_of_a_pending_run_ends_it_before_it_starts(owner_api, pending, drain_queues):
    response = control(owner_api, pending["id"], "cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    log = events(owner_api, pending["id"])
    assert [event["type"] for event in log] == ["run_cancelled"]
    assert log[0]["data"]["reason"]

    drain_queues()  # the queued job finds the run cancelled and does nothing

    execution = Execution.objects.get(pk=pending["id"])
    assert execution.status == "cancelled"
    assert execution.started_at is None
    assert execution.attempt == 0
    assert [event["type"] for event in events(owner_api, pending["id"])] == ["run_cancelled"]
    assert control(owner_api, pending["id"], "cancel").status_code == 409


def test_active_lists_only_runs_that_have_not_ended(owner_api, completed, pending):
    response = owner_api.get(f"{API}/executions/active")

    assert response.status_code == 200
    assert [run["id"] for run in response.json()] == [pending["id"]]
    assert response["X-Total-Count"] == "1"
