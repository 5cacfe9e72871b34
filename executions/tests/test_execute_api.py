"""Starting runs: `POST agents/{id}/execute`, `POST executions`, `POST chat`, and what they
refuse."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import services as agents
from agents.tests.packages import agent_files, pack_files
from executions.models import Execution
from executions.tests.runs import API, Background, deploy, execute, queued_runs, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def echo(owner, drain_queues):
    return deploy(owner, "echo", drain_queues)


def test_execute_without_wait_answers_202_with_the_pending_run(owner, owner_api, echo, rq_queues):
    response = execute(owner_api, echo.pk, input={"q": 1}, timeout_seconds=5)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["agent_id"] == str(echo.pk)
    assert body["agent_version_id"] == str(echo.current_version_id)
    assert body["user_id"] == str(owner.pk)
    assert body["timeout_seconds"] == 5
    assert body["events"] == 0
    assert queued_runs(rq_queues) == 1
    assert Execution.objects.get(pk=body["id"]).input == {"q": 1}


def test_execute_with_wait_answers_201_once_the_run_has_ended(
    owner_api, echo, rq_queues, drain_queues
):
    request = Background(lambda: execute(owner_api, echo.pk, input=[1, 2], wait=60))
    request.start()
    wait_until(lambda: queued_runs(rq_queues) == 1, message="the run queued")
    drain_queues()

    response = request.result()

    assert response.status_code == 201
    assert response.json()["status"] == "completed"
    assert response.json()["output"] == [1, 2]


def test_execute_with_a_short_wait_answers_202_when_the_run_has_not_ended(owner_api, echo):
    response = execute(owner_api, echo.pk, input=1, wait=0.2)

    assert response.status_code == 202
    assert response.json()["status"] == "pending"


def test_payload_is_accepted_as_the_input(owner_api, echo):
    response = execute(owner_api, echo.pk, payload={"from": "anymind"})

    assert response.status_code == 202
    assert response.json()["input"] == {"from": "anymind"}


@pytest.mark.parametrize("version", [1, "v1", "V1"])
def test_a_version_is_chosen_by_number_or_label(owner_api, echo, version):
    response = execute(owner_api, echo.pk, version=version)

    assert response.status_code == 202
    assert response.json()["version"] == "v1"


def test_a_version_that_is_not_ready_is_a_409(owner_api, echo, drain_queues):
    broken = pack_files(agent_files("def handle(payload:\n"))
    agents.create_version(echo, SimpleUploadedFile("v2.tar.gz", broken))
    drain_queues()

    response = execute(owner_api, echo.pk, version="v2")

    assert response.status_code == 409
    assert "v2 is failed" in response.json()["detail"]
    assert execute(owner_api, echo.pk, version=7).status_code == 404
    assert execute(owner_api, echo.pk).json()["version"] == "v1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"wait": -1}, "wait"),
        ({"version": "latest"}, "version"),
        ({"version": True}, "version"),
    ],
)
def test_bad_run_options_are_a_400(owner_api, echo, body, field):
    response = execute(owner_api, echo.pk, **body)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == field
    assert not Execution.objects.exists()


def test_an_agent_without_a_ready_version_is_a_409(owner, owner_api):
    draft = agents.create_agent(owner, name="draft")

    response = execute(owner_api, draft.pk)

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert not Execution.objects.exists()


def test_an_archived_agent_is_a_409(owner_api, echo):
    agents.update_agent(echo, status="archived")

    response = execute(owner_api, echo.pk)

    assert response.status_code == 409
    assert "archived" in response.json()["detail"]
    assert not Execution.objects.exists()


@pytest.mark.parametrize("by", ["id", "name"])
def test_post_executions_runs_the_agent_named_by_id_or_name(owner_api, echo, by):
    agent_id = str(echo.pk) if by == "id" else "echo"

    response = owner_api.post(
        f"{API}/executions", {"agent_id": agent_id, "input": "hi"}, format="json"
    )

    assert response.status_code == 202
    assert response.json()["agent_id"] == str(echo.pk)
    assert response.json()["input"] == "hi"


def test_post_executions_does_not_find_another_users_agent_by_name(other_api, echo):
    response = other_api.post(f"{API}/executions", {"agent_id": "echo"}, format="json")

    assert response.status_code == 404
    assert not Execution.objects.exists()


def test_chat_without_stream_answers_with_the_response_and_metrics(
    owner_api, echo, rq_queues, drain_queues
):
    body = {"agent_id": "echo", "message": "Hello!", "stream": False}
    request = Background(lambda: owner_api.post(f"{API}/chat", body, format="json"))
    request.start()
    wait_until(lambda: queued_runs(rq_queues) == 1, message="the run queued")
    drain_queues()

    response = request.result()

    assert response.status_code == 200
    data = response.json()
    assert data["response"] == "Hello!"
    assert data["status"] == "completed"
    assert data["run_id"] == str(Execution.objects.get().pk)
    assert set(data["metrics"]) == {"duration_ms", "cpu_ms", "peak_memory_mb"}
    assert data["metrics"]["duration_ms"] is not None
