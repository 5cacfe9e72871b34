"""The reference platforms' run paths (Oasis, Agio, Anymind) answer in their own shapes, under
/api/v1/ and /api/."""

import pytest

from agents import services as agents
from executions import services
from executions.models import Execution
from executions.tests.runs import Background, deploy, queued_runs, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BASES = ["/api/v1", "/api"]


@pytest.fixture
def echo(owner, drain_queues):
    return deploy(owner, "echo", drain_queues)


@pytest.fixture
def story(owner, drain_queues):
    return deploy(owner, "story", drain_queues)


# --- Oasis ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_workflow_execute_runs_the_newest_ready_agent_with_query_and_model(
    owner, owner_api, echo, story, base
):
    agents.create_agent(owner, name="draft")  # newer, but not ready

    response = owner_api.post(
        f"{base}/workflow/execute", {"query": "Open calculator", "model": "gpt-4o"}, format="json"
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"workflow_id", "status", "message", "created_at"}
    assert body["status"] == "pending"
    assert body["message"] == "Workflow execution started successfully"
    run = Execution.objects.get(pk=body["workflow_id"])
    assert run.agent == story
    assert run.input == {"query": "Open calculator", "model": "gpt-4o"}


def test_workflow_execute_with_an_agent_id_runs_that_agent(owner_api, echo, story):
    response = owner_api.post(
        "/api/v1/workflow/execute", {"query": "q", "agent_id": str(echo.pk)}, format="json"
    )

    assert Execution.objects.get(pk=response.json()["workflow_id"]).agent == echo
    assert Execution.objects.get().input == {"query": "q", "model": None}


def test_workflow_execute_without_a_ready_agent_is_a_409(owner, owner_api):
    agents.create_agent(owner, name="draft")

    response = owner_api.post("/api/v1/workflow/execute", {"query": "q"}, format="json")

    assert response.status_code == 409
    assert not Execution.objects.exists()


def test_workflow_status_reports_timing_and_the_joined_log(owner, owner_api, story, drain_queues):
    run = services.start_execution(owner, story, input={"topic": "a moth", "delay": 0})
    drain_queues()

    response = owner_api.get(f"/api/workflow/{run.pk}/status")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "workflow_id",
        "status",
        "message",
        "started_at",
        "completed_at",
        "duration",
        "logs",
    }
    assert body["status"] == "completed"
    assert body["message"] == "Workflow executed successfully"
    assert body["started_at"] and body["completed_at"]
    assert isinstance(body["duration"], float) and 0 < body["duration"] < 30
    assert "telling a story about a moth" in body["logs"]


def test_workflow_status_of_a_failed_run_says_why(owner, owner_api, drain_queues):
    broken = deploy(owner, "broken", drain_queues)
    run = services.start_execution(owner, broken, input="x")
    drain_queues()

    body = owner_api.get(f"/api/v1/workflow/{run.pk}/status").json()

    assert body["status"] == "failed"
    assert body["message"] == "Workflow failed: RuntimeError: broken on purpose (input: 'x')"
    assert "Traceback" in body["logs"]


def test_delete_workflow_cancels_it(owner, owner_api, echo):
    run = services.start_execution(owner, echo)

    response = owner_api.delete(f"/api/v1/workflow/{run.pk}")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["message"] == "Workflow was cancelled by user"
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_workflow_active_lists_the_runs_in_progress(owner, owner_api, echo, drain_queues):
    services.start_execution(owner, echo)
    drain_queues()
    waiting = services.start_execution(owner, echo)

    response = owner_api.get("/api/workflow/active")

    assert response.status_code == 200
    assert [item["workflow_id"] for item in response.json()] == [str(waiting.pk)]
    assert response.json()[0]["status"] == "pending"


# --- Agio ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
def test_runs_control_paths_are_the_execution_controls(owner, owner_api, echo, base):
    run = services.start_execution(owner, echo)

    assert owner_api.post(f"{base}/runs/{run.pk}/pause").status_code == 409
    assert owner_api.post(f"{base}/runs/{run.pk}/resume").status_code == 409
    cancelled = owner_api.post(f"{base}/runs/{run.pk}/cancel")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["id"] == str(run.pk)


def test_checkpoints_of_a_run_under_agios_path(owner, owner_api, drain_queues):
    counter = deploy(owner, "counter", drain_queues)
    run = services.start_execution(owner, counter, input={"to": 2, "delay": 0})
    drain_queues()

    response = owner_api.get(f"/api/checkpoints/runs/{run.pk}/checkpoints")

    assert response.status_code == 200
    assert [c["label"] for c in response.json()] == ["step 1", "step 2"]
    checkpoint = owner_api.get(f"/api/checkpoints/{response.json()[0]['id']}").json()
    assert checkpoint["state"] == {"count": 1, "steps": [1]}


def test_agio_chat_without_stream_under_api(owner_api, echo, rq_queues, drain_queues):
    body = {"agent_id": str(echo.pk), "message": "Hello!", "stream": False}
    request = Background(lambda: owner_api.post("/api/chat", body, format="json"))
    request.start()
    wait_until(lambda: queued_runs(rq_queues) == 1, message="the run queued")
    drain_queues()

    response = request.result()

    assert response.status_code == 200
    assert response.json()["response"] == "Hello!"


# --- Anymind -------------------------------------------------------------------------------------


def test_runtime_execute_waits_for_the_result(owner, owner_api, echo, rq_queues, drain_queues):
    body = {"payload": {"input": "Hello, world!"}}
    request = Background(
        lambda: owner_api.post(f"/api/v1/runtime/{echo.pk}/execute", body, format="json")
    )
    request.start()
    wait_until(lambda: queued_runs(rq_queues) == 1, message="the run queued")
    drain_queues()

    response = request.result()

    assert response.status_code == 201
    data = response.json()
    assert data["status"] == "completed"
    assert data["input_data"] == {"input": "Hello, world!"}
    assert data["output_data"] == {"input": "Hello, world!"}
    assert data["agent_version_id"] == str(echo.current_version_id)
    assert data["user_id"] == str(owner.pk)
    assert data["updated_at"] == data["finished_at"]


def test_runtime_executions_list_filters_by_version(owner, owner_api, echo, drain_queues):
    story = deploy(owner, "story", drain_queues)
    mine = services.start_execution(owner, echo, input={"a": 1})
    services.start_execution(owner, story)

    response = owner_api.get(
        "/api/v1/runtime/executions", {"agent_version_id": str(echo.current_version_id)}
    )

    assert response.status_code == 200
    assert [run["id"] for run in response.json()] == [str(mine.pk)]
    assert response.json()[0]["input_data"] == {"a": 1}
    assert "output_data" in response.json()[0]


def test_runtime_execution_detail_and_cancel(owner, owner_api, echo):
    run = services.start_execution(owner, echo, input=5)

    detail = owner_api.get(f"/api/v1/runtime/executions/{run.pk}")
    cancelled = owner_api.post(f"/api/v1/runtime/executions/{run.pk}/cancel")

    assert detail.status_code == 200
    assert detail.json()["input_data"] == 5
    assert detail.json()["status"] == "pending"
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert "input_data" in cancelled.json()


def test_anymind_execution_logs_path(owner, owner_api, story, drain_queues):
    run = services.start_execution(owner, story, input={"topic": "a moth", "delay": 0})
    drain_queues()

    response = owner_api.get(f"/api/v1/logs/executions/{run.pk}/logs")

    assert response.status_code == 200
    messages = [entry["message"] for entry in response.json()]
    assert "telling a story about a moth" in messages
    assert set(response.json()[0]) == {"timestamp", "level", "message", "source", "metadata"}
