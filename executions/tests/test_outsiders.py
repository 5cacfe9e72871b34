"""Another user's agents, runs, checkpoints and batches do not exist for an outsider: every
endpoint, canonical or compatibility, answers 404 and changes nothing."""

import pytest

from executions import services
from executions.models import Batch, Checkpoint, Execution
from executions.tests.runs import deploy

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SSE = {"HTTP_ACCEPT": "text/event-stream"}

ENDPOINTS = [
    # (method, path, body, extra headers)
    ("post", "/api/v1/agents/{agent}/execute", {"input": 1}, {}),
    ("post", "/api/v1/executions", {"agent_id": "{agent}"}, {}),
    ("post", "/api/v1/executions", {"agent_id": "counter"}, {}),
    ("get", "/api/v1/executions/{done}", None, {}),
    ("get", "/api/v1/executions/{done}/logs", None, {}),
    ("get", "/api/v1/executions/{done}/events", None, {}),
    ("get", "/api/v1/executions/{done}/events", None, SSE),
    ("get", "/api/v1/executions/{done}/checkpoints", None, {}),
    ("post", "/api/v1/executions/{pending}/cancel", None, {}),
    ("post", "/api/v1/executions/{pending}/pause", None, {}),
    ("post", "/api/v1/executions/{pending}/resume", None, {}),
    ("get", "/api/v1/checkpoints/{checkpoint}", None, {}),
    ("post", "/api/v1/checkpoints/{checkpoint}/restore", {}, {}),
    ("post", "/api/v1/checkpoints/{checkpoint}/fork", {"modifications": {"input": 1}}, {}),
    ("get", "/api/v1/batches/{batch}", None, {}),
    ("post", "/api/v1/execute", {"agent_ids": ["{agent}"]}, {}),
    ("post", "/api/v1/chat", {"agent_id": "{agent}", "message": "hi", "stream": False}, {}),
    ("post", "/api/v1/chat", {"agent_id": "counter", "message": "hi", "stream": False}, {}),
    ("post", "/api/v1/chat", {"agent_id": "{agent}", "message": "hi", "stream": True}, SSE),
    ("post", "/api/workflow/execute", {"query": "q", "agent_id": "{agent}"}, {}),
    ("get", "/api/workflow/{done}/status", None, {}),
    ("delete", "/api/workflow/{pending}", None, {}),
    ("post", "/api/runs/{pending}/pause", None, {}),
    ("post", "/api/runs/{pending}/resume", None, {}),
    ("post", "/api/runs/{pending}/cancel", None, {}),
    ("get", "/api/checkpoints/runs/{done}/checkpoints", None, {}),
    ("post", "/api/v1/runtime/{agent}/execute", {"payload": {}}, {}),
    ("get", "/api/v1/runtime/executions/{done}", None, {}),
    ("post", "/api/v1/runtime/executions/{pending}/cancel", None, {}),
    ("get", "/api/v1/logs/executions/{done}/logs", None, {}),
]


@pytest.fixture
def owned(owner, drain_queues) -> dict:
    counter = deploy(owner, "counter", drain_queues)
    done = services.start_execution(owner, counter, input={"to": 2, "delay": 0})
    drain_queues()
    pending = services.start_execution(owner, counter, input={"to": 2, "delay": 0})
    batch = services.start_batch(owner, agent_ids=[counter.pk])
    return {
        "agent": str(counter.pk),
        "done": str(done.pk),
        "pending": str(pending.pk),
        "checkpoint": str(Checkpoint.objects.filter(execution=done).first().pk),
        "batch": str(batch.pk),
    }


def fill(value, ids: dict):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    return value


def test_every_endpoint_answers_404_to_an_outsider(other_api, owned):
    runs_before = set(Execution.objects.values_list("pk", "status"))

    wrong = []
    for method, path, body, headers in ENDPOINTS:
        url = fill(path, owned)
        call = getattr(other_api, method)
        if body is None:
            response = call(url, **headers)
        else:
            response = call(url, fill(body, owned), format="json", **headers)
        if response.status_code != 404:
            wrong.append(f"{method.upper()} {path} {headers or ''}: {response.status_code}")

    assert wrong == []
    assert set(Execution.objects.values_list("pk", "status")) == runs_before
    assert Batch.objects.count() == 1


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/executions",
        "/api/v1/executions/active",
        "/api/workflow/active",
        "/api/v1/runtime/executions",
    ],
)
def test_an_outsiders_lists_are_empty(other_api, owned, path):
    response = other_api.get(path)

    assert response.status_code == 200
    assert response.json() == []


def test_the_owner_reaches_the_same_objects(owner_api, owned):
    assert owner_api.get(f"/api/v1/executions/{owned['done']}").status_code == 200
    assert owner_api.get(f"/api/v1/checkpoints/{owned['checkpoint']}").status_code == 200
    assert owner_api.get(f"/api/v1/batches/{owned['batch']}").status_code == 200


def test_an_admin_reaches_everyones_runs(admin_api, owned):
    assert admin_api.get(f"/api/v1/executions/{owned['done']}").status_code == 200
    assert admin_api.get(f"/api/v1/executions/{owned['done']}/events").status_code == 200
    assert admin_api.get(f"/api/v1/batches/{owned['batch']}").status_code == 200
