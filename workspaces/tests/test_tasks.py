"""Tasks: runs of an agent in a session's workspace (`POST/GET sessions/{id}/tasks`).

First through the API without a worker or a session host (what is recorded and queued, the
refusals, the outsider), then with the burst worker's supervisor (a task whose session cannot
take it ends failed, saying why, before any sandbox starts), then on the live stack: a real
session host, run worker and sandboxes, the agent reading and writing the workspace with
`ctx.workspace`, its events on the run's own streams and on both session sockets."""

from __future__ import annotations

import contextlib
import json
from uuid import UUID

import pytest

from agents.models import AgentVersion
from agents.tests.packages import pack_files
from executions.models import Checkpoint, Execution
from executions.tests.live import Client, sse_frames
from executions.tests.runs import Background, queued_runs, wait_until
from executions.tests.wsclient import api_key_of, live_socket, read_until, read_until_closed
from executions.tests.wsclient import ready_agent as ready_agent_of
from executions.waits import wait_until as wait_for_run
from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.tests.daemons import API, TEST_HOST, activate, new_session
from workspaces.waits import wait_until as wait_for_session

COMMITTING = pytest.mark.django_db(transaction=True)
BASES = ["/api/v1/sessions", "/api/sessions"]


@pytest.fixture
def agent(owner):
    return ready_agent_of(owner, name="worker")


@pytest.fixture
def session(owner, agent):
    """An active session of the owner with its agent (no host, no sandbox: none runs here)."""
    return activate(new_session(owner, agent=agent))


def tasks_of(session_id, base=BASES[0]) -> str:
    return f"{base}/{session_id}/tasks"


# --- the API ---------------------------------------------------------------------------------


@COMMITTING
def test_a_task_is_a_run_of_the_sessions_agent_queued_for_a_run_worker(
    owner_api, owner, session, agent, rq_queues
):
    response = owner_api.post(tasks_of(session.pk), {"input": {"q": 1}}, format="json")

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["session_id"] == str(session.pk)
    assert body["agent_id"] == str(agent.pk)
    assert body["status"] == "pending"
    assert body["input"] == {"q": 1}
    task = Execution.objects.get(pk=body["id"])
    assert (task.session_id, task.user_id, task.version.number) == (session.pk, owner.pk, 1)
    assert queued_runs(rq_queues) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("by", ["id", "name"])
def test_the_agent_named_in_the_body_is_run(owner_api, owner, session, by):
    named = ready_agent_of(owner, name="helper")

    response = owner_api.post(
        tasks_of(session.pk), {"agent": str(getattr(named, by)), "input": "x"}, format="json"
    )

    assert response.status_code == 202, response.content
    assert response.json()["agent_id"] == str(named.pk)


@pytest.mark.django_db
def test_another_users_agent_is_not_found(owner_api, session, other):
    foreign = ready_agent_of(other, name="foreign")

    by_id = owner_api.post(tasks_of(session.pk), {"agent": str(foreign.pk)}, format="json")
    by_name = owner_api.post(tasks_of(session.pk), {"agent": "foreign"}, format="json")

    assert (by_id.status_code, by_name.status_code) == (404, 404)
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_a_session_without_an_agent_needs_one_named(owner_api, owner):
    bare = activate(new_session(owner))

    response = owner_api.post(tasks_of(bare.pk), {"input": "x"}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "agent"
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_an_agent_without_a_ready_version_is_a_409(owner_api, owner, session):
    AgentVersion.objects.filter(agent=session.agent).update(status="failed")
    session.agent.refresh_state()

    response = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json")

    assert response.status_code == 409
    assert not Execution.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["starting", "stopped"])
def test_a_session_that_is_not_active_takes_no_task(owner_api, owner, agent, state):
    session = new_session(owner, agent=agent)
    if state == "stopped":
        activate(session)
        assert Session.mark_stopped(session.pk, host=TEST_HOST)

    response = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json")

    assert response.status_code == 409
    assert response.json()["code"] == "session_not_active"
    assert not Execution.objects.exists()


@pytest.mark.django_db
def test_a_retry_with_the_same_idempotency_key_gets_the_same_task(owner_api, session):
    headers = {"HTTP_IDEMPOTENCY_KEY": "task-1"}
    first = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json", **headers)
    again = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json", **headers)

    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert Execution.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("base", BASES)
def test_a_session_lists_its_own_tasks_newest_first(
    owner_api, owner, session, agent, base, django_assert_max_num_queries
):
    older = owner_api.post(tasks_of(session.pk), {"input": 1}, format="json").json()
    newer = owner_api.post(tasks_of(session.pk), {"input": 2}, format="json").json()
    elsewhere = activate(new_session(owner, agent=agent))
    owner_api.post(tasks_of(elsewhere.pk), {"input": 3}, format="json")
    owner_api.post(f"{API}/agents/{agent.pk}/execute", {"input": 4}, format="json")

    with django_assert_max_num_queries(6):
        response = owner_api.get(tasks_of(session.pk, base))

    assert response.status_code == 200
    assert [task["id"] for task in response.json()] == [newer["id"], older["id"]]
    assert response["X-Total-Count"] == "2"
    assert owner_api.get(tasks_of(session.pk, base), {"status": "completed"}).json() == []


@pytest.mark.django_db
@pytest.mark.parametrize("base", BASES)
def test_an_outsider_gets_404_on_the_task_endpoints(other_api, owner_api, session, other, base):
    own_agent = ready_agent_of(other, name="outsiders")
    owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json")

    listed = other_api.get(tasks_of(session.pk, base))
    started = other_api.post(tasks_of(session.pk, base), {"input": "x"}, format="json")
    with_own_agent = other_api.post(
        tasks_of(session.pk, base), {"agent": str(own_agent.pk)}, format="json"
    )

    assert (listed.status_code, started.status_code, with_own_agent.status_code) == (404,) * 3
    assert listed.json()["code"] == "not_found"
    assert Execution.objects.count() == 1


# --- the worker refuses a task its session cannot take -----------------------------------------


@COMMITTING
def test_a_task_whose_workspace_is_not_mounted_here_fails_saying_so(
    owner_api, session, rq_queues, drain_queues
):
    # `wait`: the request answers once the task has ended, run by the worker meanwhile.
    request = Background(
        lambda: owner_api.post(tasks_of(session.pk), {"input": "x", "wait": 60}, format="json")
    )
    request.start()
    wait_until(lambda: queued_runs(rq_queues) == 1, message="the task queued")
    drain_queues()
    response = request.result()

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "failed"
    assert body["error_message"] == "The session's workspace is not mounted on this machine"
    assert not Execution.objects.get(pk=body["id"]).sandbox_started


@COMMITTING
def test_a_task_of_a_session_stopped_meanwhile_fails_without_a_sandbox(
    owner_api, session, rq_queues, drain_queues
):
    task = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json").json()
    assert Session.mark_stopped(session.pk, host=TEST_HOST)

    drain_queues()

    ended = Execution.objects.get(pk=task["id"])
    assert ended.status == "failed"
    assert ended.error_message.startswith("The session is stopped")
    assert not ended.sandbox_started
    assert [e.type for e in ended.events.order_by("seq")] == ["run_started", "run_failed"]


def test_a_task_checkpoint_restores_or_forks_into_a_task_of_its_session_while_it_is_active(
    owner_api, session
):
    task = owner_api.post(tasks_of(session.pk), {"input": "x"}, format="json").json()
    checkpoint = Checkpoint.objects.create(
        execution_id=task["id"], seq=1, label="halfway", state={"step": 1}
    )
    url = f"{API}/checkpoints/{checkpoint.pk}"

    restored = owner_api.post(f"{url}/restore", {}, format="json")
    assert restored.status_code == 201, restored.content
    assert restored.json()["session_id"] == str(session.pk)

    assert Session.mark_stopped(session.pk, host=TEST_HOST)
    for what in ("restore", "fork"):
        refused = owner_api.post(f"{url}/{what}", {}, format="json")
        assert refused.status_code == 409, refused.content
        assert refused.json()["code"] == "session_not_active"
    assert Execution.objects.filter(session_id=session.pk).count() == 2  # nothing new


# --- on the live stack: a real session, worker and sandbox -------------------------------------

WORKSPACE_AGENT = """
def handle(payload, ctx):
    ws = ctx.workspace
    if payload == "block":  # a command that runs until the task is cancelled
        ctx.tool_call("block", {})
        return ws.run("sleep 600", timeout=600)
    seen = ws.read("from-api.txt")
    ctx.delta("read ")
    ctx.delta("it")
    ctx.tool_call("ls", {"path": "."})
    listing = ws.run("ls")
    ctx.tool_result("ls", listing["stdout"].split())
    ws.write("from-task/out.txt", seen.upper())
    return {
        "seen": seen,
        "ls": listing["stdout"].split(),
        "exit_code": listing["exit_code"],
        "entries": [entry["name"] for entry in ws.list()],
    }
"""
MANIFEST = "name: {name}\nentrypoint: agent.main:handle\nruntime: python3.11\ntimeout: 60\n"


def build(live, client: Client, owner, name: str) -> str:
    """An agent of `owner` whose handler works in its session's workspace, built by the live
    stack. Waits on the owner's feed: its `build_completed`, or (should that message be lost)
    the version's status read at each message of the feed. Its id."""
    files = {
        "aimos.yaml": MANIFEST.format(name=name),
        "agent/__init__.py": "",
        "agent/main.py": WORKSPACE_AGENT,
    }
    agent = client.post("/agents", json={"name": name}).json()
    versions = AgentVersion.objects.filter(agent_id=agent["id"])

    def built(got) -> bool:
        told = any(m["type"] == "build_completed" for m in got)
        return told or versions.filter(status__in=["ready", "failed"]).exists()

    with live_socket(live, "/ws/events/", api_key_of(owner)) as feed:
        uploaded = client.post(
            f"/agents/{agent['id']}/versions", files={"file": ("a.tar.gz", pack_files(files))}
        )
        assert uploaded.status_code == 201, uploaded.text
        read_until(feed, built, timeout=180)
    version = versions.get()
    assert version.status == "ready", version.build_log
    return agent["id"]


@pytest.fixture
def workspace_agent(live, owner):
    """(client, the id of a workspace agent) on the live stack."""
    client = Client(live, owner)
    return client, build(live, client, owner, "workspace-agent")


def create_session(client: Client, **body) -> dict:
    created = client.post("/sessions", json=body)
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["status"] == "active", session
    return session


@pytest.fixture
def live_session(workspace_agent):
    """(client, an active session of a workspace agent) on the live stack."""
    client, agent_id = workspace_agent
    session = create_session(client, agent_id=agent_id)
    yield client, session
    client.delete(f"/sessions/{session['id']}")


def start_blocking_task(live, owner, client: Client, session_id: str) -> str:
    """A task of the session that runs until it is cancelled; its id once it is running (its
    `tool_call` came on the session's socket)."""
    with live_socket(live, f"/ws/sessions/{session_id}/", api_key_of(owner)) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "session_status"
        started = client.post(f"/sessions/{session_id}/tasks", json={"input": "block"})
        assert started.status_code == 202, started.text
        read_until(socket, lambda got: any(m["type"] == "tool_call" for m in got))
    task = Execution.objects.get(pk=started.json()["id"])
    assert task.status == "running"
    return str(task.pk)


def settle(session_id, statuses) -> Session:
    """The session once it is in one of `statuses` (woken by its announcements)."""
    seen = wait_for_session(Session.objects.get(pk=session_id), lambda s: s.status in statuses, 60)
    assert seen is not None and seen.status in statuses, seen and (seen.status, seen.error)
    return seen


@pytest.mark.slow
def test_a_task_sees_and_changes_the_session_workspace(live_session):
    client, session = live_session
    base = f"/sessions/{session['id']}"
    written = client.post(f"{base}/files/content", json={"path": "from-api.txt", "content": "hi"})
    assert written.status_code == 200, written.text

    response = client.post(f"{base}/tasks", json={"input": None, "wait": 90})

    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "completed", task
    assert task["session_id"] == session["id"]
    assert task["output"]["seen"] == "hi"
    assert task["output"]["exit_code"] == 0
    assert "from-api.txt" in task["output"]["ls"]
    assert {"from-api.txt", "from-task"} <= set(task["output"]["entries"])
    read = client.get(f"{base}/files/content", params={"path": "from-task/out.txt"}).json()
    assert read["content"] == "HI"
    assert [t["id"] for t in client.get(f"{base}/tasks").json()] == [task["id"]]
    assert client.get(f"/executions/{task['id']}").json()["status"] == "completed"


@pytest.mark.slow
def test_a_tasks_events_stream_on_its_run_and_on_both_session_sockets(live, owner, live_session):
    client, session = live_session
    base = f"/sessions/{session['id']}"
    client.post(f"{base}/files/content", json={"path": "from-api.txt", "content": "hi"})
    key = api_key_of(owner)
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(live_socket(live, f"/ws/sessions/{session['id']}/", key)),
            stack.enter_context(live_socket(live, f"/ws/{session['id']}", key)),
        ]
        for socket in sockets:
            first = json.loads(socket.recv(timeout=30))
            assert first["type"] == "session_status"
            assert first["data"]["status"] == "active"

        started = client.post(f"{base}/tasks", json={"input": None})
        assert started.status_code == 202, started.text
        task_id = started.json()["id"]

        on_sockets = [
            read_until(socket, lambda got: bool(got) and got[-1]["type"] == "task_completed")
            for socket in sockets
        ]

    expected = [
        "task_started",
        "text_delta",
        "text_delta",
        "tool_call",
        "tool_complete",
        "file_changed",
        "task_completed",
    ]
    for messages in on_sockets:
        assert [m["type"] for m in messages] == expected
        assert {m["data"]["execution_id"] for m in messages} == {task_id}
        assert "".join(m["data"]["content"] for m in messages if m["type"] == "text_delta") == (
            "read it"
        )
        assert messages[5]["data"]["path"] == "from-task/out.txt"
        assert messages[-1]["data"]["status"] == "completed"
        assert messages[-1]["data"]["output"]["seen"] == "hi"

    with live_socket(live, f"/ws/executions/{task_id}/", key) as run_socket:
        on_run, code = read_until_closed(run_socket)
    kinds = [event["type"] for event in on_run if event["type"] != "log"]
    assert kinds == [
        "run_started",
        "content_delta",
        "content_delta",
        "tool_call",
        "tool_result",
        "file_changed",
        "run_completed",
    ]
    assert code == 1000

    stream = client.get(
        f"/executions/{task_id}/events", headers={"Accept": "text/event-stream"}, stream=True
    )
    frames = [frame for frame in sse_frames(stream) if "event" in frame]
    assert [f["event"] for f in frames if f["event"] != "log"] == kinds


@pytest.mark.slow
def test_a_task_is_cancelled_as_any_run_and_its_sockets_say_so(live, owner, live_session):
    client, session = live_session
    with live_socket(live, f"/ws/sessions/{session['id']}/", api_key_of(owner)) as socket:
        assert json.loads(socket.recv(timeout=30))["type"] == "session_status"
        started = client.post(f"/sessions/{session['id']}/tasks", json={"input": "block"})
        task_id = started.json()["id"]
        read_until(socket, lambda got: any(m["type"] == "tool_call" for m in got))

        cancelled = client.post(f"/executions/{task_id}/cancel")

        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        ending = read_until(socket, lambda got: bool(got) and got[-1]["type"] == "task_completed")
    assert [m["type"] for m in ending] == ["error", "task_completed"]
    assert ending[0]["data"]["status"] == "cancelled"
    assert ending[1]["data"]["execution_id"] == task_id


@pytest.mark.slow
def test_another_user_is_refused_on_the_live_session_sockets(live, other, live_session):
    _, session = live_session
    for path in (f"/ws/sessions/{session['id']}/", f"/ws/{session['id']}"):
        with live_socket(live, path, api_key_of(other)) as socket:
            messages, code = read_until_closed(socket, timeout=30)
        assert (messages, code) == ([], 4404)


@pytest.mark.slow
def test_a_session_whose_task_runs_is_not_idle_until_the_task_ends(live, owner, workspace_agent):
    client, agent_id = workspace_agent
    busy = create_session(client, agent_id=agent_id, idle_timeout_seconds=1)
    task_id = start_blocking_task(live, owner, client, busy["id"])

    # A session made now with the same idle timeout and no task is stopped by an idle check
    # that found the busy one idle as long, or longer (nothing used it since its task began).
    idle = create_session(client, idle_timeout_seconds=1)
    assert settle(idle["id"], SessionStatus.ended()).status == SessionStatus.STOPPED

    assert Session.objects.get(pk=busy["id"]).status == SessionStatus.ACTIVE
    assert Execution.objects.get(pk=task_id).status == "running"
    # Its task over, the session is idle from then on, and stopped.
    assert client.post(f"/executions/{task_id}/cancel").json()["status"] == "cancelled"
    stopped = settle(busy["id"], SessionStatus.ended())
    assert (stopped.status, stopped.error) == (SessionStatus.STOPPED, "")
    client.delete(f"/sessions/{busy['id']}")
    client.delete(f"/sessions/{idle['id']}")


@pytest.mark.slow
@pytest.mark.parametrize("end", ["stop", "delete"])
def test_a_session_that_stops_or_is_deleted_cancels_its_running_task(
    live, owner, live_session, end
):
    client, session = live_session
    base = f"/sessions/{session['id']}"
    task_id = start_blocking_task(live, owner, client, session["id"])

    if end == "stop":
        response = client.post(f"{base}/stop")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "stopped"
    else:
        assert client.delete(base).status_code == 204

    task = Execution.objects.get(pk=task_id)
    assert task.status == "cancelled", (task.status, task.error_message)
    # The run's record stays; a deleted session's, without its session.
    assert task.session_id == (UUID(session["id"]) if end == "stop" else None)


@pytest.mark.slow
def test_a_paused_session_pauses_its_running_task_and_its_resume_resumes_it(
    live, owner, live_session
):
    client, session = live_session
    base = f"/sessions/{session['id']}"
    task_id = start_blocking_task(live, owner, client, session["id"])

    paused = client.post(f"{base}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert Execution.objects.get(pk=task_id).status == "paused"
    refused = client.post(f"{base}/tasks", json={"input": "block"})
    assert refused.status_code == 409 and refused.json()["code"] == "session_not_active"

    resumed = client.post(f"{base}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    task = wait_for_run(Execution.objects.get(pk=task_id), lambda t: t.status != "paused", 30)
    assert task.status == "running"
    assert client.post(f"/executions/{task_id}/cancel").json()["status"] == "cancelled"
