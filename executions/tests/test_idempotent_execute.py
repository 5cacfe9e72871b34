"""`Idempotency-Key` on the requests that start runs: a retry gets the first request's run
back, never a second one; the key reused for another request is a 409."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from aimos.upkeep import upkeep_pass
from executions.models import Batch, Execution, IdempotencyKey
from executions.tests.wsclient import ready_agent

API = "/api/v1"


def execute(client, agent, key, **body):
    return client.post(
        f"{API}/agents/{agent.pk}/execute", body, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


@pytest.mark.django_db
def test_the_same_key_returns_the_same_execution_and_runs_once(owner_api, owner, rq_queues):
    agent = ready_agent(owner)

    first = execute(owner_api, agent, "key-1", input={"n": 1})
    again = execute(owner_api, agent, "key-1", input={"n": 1})

    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_the_wait_asked_for_is_not_part_of_the_request(owner_api, owner, rq_queues):
    agent = ready_agent(owner)

    first = execute(owner_api, agent, "key-w", input={"n": 1})
    again = execute(owner_api, agent, "key-w", input={"n": 1}, wait=0)

    assert again.status_code == 202
    assert first.json()["id"] == again.json()["id"]


@pytest.mark.django_db
def test_a_key_reused_for_a_different_request_is_a_409(owner_api, owner, rq_queues):
    agent = ready_agent(owner)
    execute(owner_api, agent, "key-2", input={"n": 1})

    response = execute(owner_api, agent, "key-2", input={"n": 2})

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "idempotency_key_reused"
    assert "different request" in body["detail"]
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_user(owner_api, other_api, owner, other, rq_queues):
    mine, theirs = ready_agent(owner), ready_agent(other)

    a = execute(owner_api, mine, "shared-key", input={})
    b = execute(other_api, theirs, "shared-key", input={})

    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


@pytest.mark.django_db
def test_the_create_route_and_the_compatible_routes_honour_the_key(owner_api, owner, rq_queues):
    agent = ready_agent(owner)
    body = {"agent_id": str(agent.pk), "input": {"q": 1}}

    first = owner_api.post(f"{API}/executions", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    again = owner_api.post("/api/executions", body, format="json", HTTP_IDEMPOTENCY_KEY="k")

    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert Execution.objects.count() == 1


@pytest.mark.django_db
def test_a_batch_with_the_same_key_starts_once(owner_api, owner, rq_queues):
    ready_agent(owner, name="one")
    ready_agent(owner, name="two")
    body = {"parallel": True, "input": {"x": 1}}

    first = owner_api.post(f"{API}/execute", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    again = owner_api.post(f"{API}/execute", body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    other = owner_api.post(
        f"{API}/execute", {**body, "parallel": False}, format="json", HTTP_IDEMPOTENCY_KEY="b-1"
    )

    assert first.status_code == again.status_code == 202
    assert first.json()["execution_id"] == again.json()["execution_id"]
    assert Batch.objects.count() == 1
    assert Execution.objects.count() == 2
    assert other.status_code == 409


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "ключ"])
def test_a_malformed_key_is_a_400_naming_the_header(owner_api, owner, key, rq_queues):
    agent = ready_agent(owner)

    response = execute(owner_api, agent, key, input={})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert Execution.objects.count() == 0


@pytest.mark.django_db
def test_a_key_older_than_a_day_is_forgotten_and_pruned_by_upkeep(owner_api, owner, rq_queues):
    agent = ready_agent(owner)
    first = execute(owner_api, agent, "old", input={}).json()["id"]
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))

    second = execute(owner_api, agent, "old", input={}).json()["id"]
    assert second != first
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))

    assert upkeep_pass()["idempotency_keys_pruned"] == 1
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_with_one_key_make_one_run(owner, rq_queues):
    agent = ready_agent(owner)
    barrier = threading.Barrier(2)
    responses = []

    def post():
        client = APIClient()
        client.force_authenticate(owner)
        barrier.wait()
        try:
            responses.append(execute(client, agent, "race", input={"n": 1}))
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(r.status_code for r in responses) == [202, 202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert Execution.objects.count() == 1
    assert rq_queues[1].count == 1
