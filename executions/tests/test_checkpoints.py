"""Checkpoints: restore and fork start new runs from a saved state (the counter example)."""

import pytest

from executions.models import Execution
from executions.tests.runs import API, deploy, execute

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def counted(owner, owner_api, drain_queues) -> dict:
    """A finished counter run to 3, and its checkpoints by label."""
    agent = deploy(owner, "counter", drain_queues)
    run = execute(owner_api, agent.pk, input={"to": 3, "delay": 0}).json()
    drain_queues()
    checkpoints = owner_api.get(f"{API}/executions/{run['id']}/checkpoints").json()
    return {"run": run, "checkpoints": {c["label"]: c for c in checkpoints}}


def post(client, checkpoint_id, what, body):
    return client.post(f"{API}/checkpoints/{checkpoint_id}/{what}", body, format="json")


def finished(client, drain, execution_id) -> dict:
    drain()
    return client.get(f"{API}/executions/{execution_id}").json()


def test_restore_resumes_from_the_saved_state_with_a_new_input(owner_api, counted, drain_queues):
    step2 = counted["checkpoints"]["step 2"]

    response = post(
        owner_api, step2["id"], "restore", {"modifications": {"input": {"to": 4, "delay": 0}}}
    )

    assert response.status_code == 201
    created = response.json()
    assert created["status"] == "pending"
    assert created["parent_id"] == counted["run"]["id"]
    assert created["source_checkpoint_id"] == step2["id"]
    assert created["version"] == counted["run"]["version"]
    run = finished(owner_api, drain_queues, created["id"])
    assert run["status"] == "completed"
    assert run["output"] == {"count": 4, "resumed_from": 2, "steps": [1, 2, 3, 4]}


def test_restore_without_modifications_reruns_the_same_input(owner_api, counted, drain_queues):
    response = post(owner_api, counted["checkpoints"]["step 1"]["id"], "restore", {})

    assert response.status_code == 201
    assert response.json()["input"] == {"to": 3, "delay": 0}
    run = finished(owner_api, drain_queues, response.json()["id"])
    assert run["output"] == {"count": 3, "resumed_from": 1, "steps": [1, 2, 3]}


def test_restore_accepts_agios_modified_query_as_the_input(owner_api, counted):
    response = post(
        owner_api,
        counted["checkpoints"]["step 2"]["id"],
        "restore",
        {"create_new_run": True, "modifications": {"modified_query": {"to": 9}}},
    )

    assert response.status_code == 201
    assert response.json()["input"] == {"to": 9}


def test_restore_in_place_is_refused_with_the_reason(owner_api, counted):
    response = post(
        owner_api, counted["checkpoints"]["step 2"]["id"], "restore", {"create_new_run": False}
    )

    assert response.status_code == 400
    assert "new run" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "create_new_run"
    assert Execution.objects.count() == 1


def test_restore_refuses_changes_other_than_the_input(owner_api, counted):
    response = post(
        owner_api,
        counted["checkpoints"]["step 2"]["id"],
        "restore",
        {"modifications": {"env": {"A": "1"}}},
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "modifications.env"
    assert Execution.objects.count() == 1


def test_fork_runs_from_a_changed_state(owner_api, counted, drain_queues):
    step1 = counted["checkpoints"]["step 1"]

    response = post(
        owner_api,
        step1["id"],
        "fork",
        {
            "modifications": {
                "state": {"count": 10, "steps": [10]},
                "input": {"to": 12, "delay": 0},
                "version": "v1",
                "env": {"MODE": "fork"},
                "timeout_seconds": 15,
            }
        },
    )

    assert response.status_code == 201
    created = response.json()
    assert created["parent_id"] == counted["run"]["id"]
    assert created["source_checkpoint_id"] == step1["id"]
    assert created["timeout_seconds"] == 15
    assert Execution.objects.get(pk=created["id"]).env == {"MODE": "fork"}
    run = finished(owner_api, drain_queues, created["id"])
    assert run["output"] == {"count": 12, "resumed_from": 10, "steps": [10, 11, 12]}


@pytest.mark.parametrize(
    "modifications",
    [
        {"system_prompt": "New prompt"},
        {"timeout_seconds": 0},
        {"version": "newest"},
        {"env": ["not", "a", "mapping"]},
    ],
)
def test_fork_refuses_bad_modifications(owner_api, counted, modifications):
    response = post(
        owner_api,
        counted["checkpoints"]["step 1"]["id"],
        "fork",
        {"modifications": modifications},
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"].startswith("modifications")
    assert Execution.objects.count() == 1


def test_fork_to_a_version_that_does_not_exist_is_a_404(owner_api, counted):
    response = post(
        owner_api,
        counted["checkpoints"]["step 1"]["id"],
        "fork",
        {"modifications": {"version": 5}},
    )

    assert response.status_code == 404
    assert Execution.objects.count() == 1
