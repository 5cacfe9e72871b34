"""The session's WebSocket (`/ws/sessions/<id>/` and Crogia's `/ws/<session_id>`), in process:
Channels' communicator on the real ASGI application, the Redis channel layer, PostgreSQL and
a real session daemon for followed processes. (Task runs' events through a real worker and
sandbox: `test_tasks.py`, on the live stack.)"""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile

from executions import events as event_log
from executions import outcomes
from executions import services as runs
from executions.tests.wsclient import (
    api_key_of,
    closed,
    communicator,
    key_header,
    ready_agent,
    receive,
    refusal,
)
from workspaces import live, operations
from workspaces.models import Session
from workspaces.tests.daemons import API, TEST_HOST
from workspaces.waits import announce

pytestmark = pytest.mark.django_db(transaction=True)

PATHS = ["/ws/sessions/{}/", "/ws/{}"]


@pytest.fixture
def key(owner):
    return api_key_of(owner)


def task_of(session, agent):
    """A pending task of the session (not queued: these tests write its events)."""
    return runs.start_execution(
        session.owner, agent, input="x", session_id=session.pk, enqueue=False
    )


async def connect(path: str, key: str):
    client = communicator(path, key_header(key))
    connected, _ = await client.connect()
    assert connected
    return client


async def next_of(client, kind: str) -> dict:
    """The next message of type `kind` (messages of other types before it are skipped)."""
    while True:
        message = await receive(client)
        if message["type"] == kind:
            return message


# --- who may connect ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_the_owner_gets_the_sessions_status_first(active_session, key, path):
    async def scenario():
        client = await connect(path.format(active_session.pk), key)
        first = await receive(client)
        await client.disconnect()
        return first

    first = async_to_sync(scenario)()
    assert first["type"] == "session_status"
    assert first["data"] == {"session_id": str(active_session.pk), "status": "active", "error": ""}
    assert first["timestamp"]


@pytest.mark.parametrize("path", PATHS)
def test_another_users_session_looks_like_a_missing_one(active_session, other, path):
    outsider = key_header(api_key_of(other))
    foreign = async_to_sync(refusal)(path.format(active_session.pk), outsider)
    missing = async_to_sync(refusal)(path.format("00000000-0000-0000-0000-000000000000"), outsider)
    assert foreign == missing == {"type": "websocket.close", "code": 4404}


def test_a_malformed_id_closes_4404(owner, key):
    output = async_to_sync(refusal)("/ws/sessions/nope/", key_header(key))
    assert output == {"type": "websocket.close", "code": 4404}


@pytest.mark.parametrize("path", PATHS)
def test_no_credentials_close_4401(active_session, path):
    output = async_to_sync(refusal)(path.format(active_session.pk))
    assert output == {"type": "websocket.close", "code": 4401}


def test_a_foreign_origin_closes_4403(active_session, key):
    headers = [(b"origin", b"https://evil.example"), *key_header(key)]
    output = async_to_sync(refusal)(f"/ws/{active_session.pk}", headers)
    assert output == {"type": "websocket.close", "code": 4403}


# --- task events -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_a_tasks_events_arrive_as_the_references_task_events(active_session, owner, key, path):
    agent = ready_agent(owner)
    unrelated = runs.start_execution(owner, agent, input="elsewhere", enqueue=False)
    task = task_of(active_session, agent)

    async def scenario():
        client = await connect(path.format(active_session.pk), key)
        await next_of(client, "session_status")
        await sync_to_async(record)(unrelated, ("run_started", {"run_id": str(unrelated.pk)}))
        await sync_to_async(play)(task)
        received = [await receive(client) for _ in range(9)]
        await client.disconnect()
        return received

    received = async_to_sync(scenario)()
    assert [m["type"] for m in received] == [
        "task_started",  # not the unrelated run's run_started: it is no task of this session
        "text_delta",
        "text_delta",
        "tool_call",
        "tool_complete",
        "file_changed",
        "error",
        "task_completed",
        "error",
    ]
    assert all(m["data"]["execution_id"] == str(task.pk) for m in received)
    data = [{k: v for k, v in m["data"].items() if k != "execution_id"} for m in received]
    assert data[0] == {"agent_id": str(agent.pk), "version": None}
    assert [d["content"] for d in data[1:3]] == ["Hel", "lo"]
    assert data[3] == {"call_id": "call_1", "name": "ls", "args": {"path": "."}}
    assert data[4] == {"call_id": "call_1", "name": "ls", "result": ["a.txt"]}
    assert data[5] == {"path": "out.txt", "change": "created"}
    assert data[6] == {"message": "output cut", "fatal": False}
    assert data[7]["status"] == "completed"
    assert data[7]["output"] == {"answer": 42}
    # A marker sent after the end: nothing else came in between.
    assert data[8]["message"] == "not part of this run"


def record(execution, *items):
    event_log.record_events(execution.pk, list(items))


def play(task) -> None:
    record(task, ("run_started", {"run_id": str(task.pk), "agent_id": str(task.agent_id)}))
    record(task, ("content_delta", {"content": "Hel"}), ("content_delta", {"content": "lo"}))
    record(task, ("tool_call", {"call_id": "call_1", "name": "ls", "args": {"path": "."}}))
    record(task, ("tool_result", {"call_id": "call_1", "name": "ls", "result": ["a.txt"]}))
    record(task, ("log", {"level": "info", "message": "not sent", "source": "stdout"}))
    record(task, ("file_changed", {"path": "out.txt", "change": "created"}))
    record(task, ("error", {"message": "output cut"}))
    assert outcomes.finish(task, "completed", output={"answer": 42}, duration_ms=5)
    # A marker after the end, so the test knows nothing else was sent in between.
    record(task, ("error", {"message": "not part of this run"}))


def test_a_failed_task_says_error_then_task_completed(active_session, owner, key):
    task = task_of(active_session, ready_agent(owner))

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        await sync_to_async(record)(task, ("run_started", {"run_id": str(task.pk)}))
        await sync_to_async(outcomes.finish)(task, "failed", reason="boom", error_type="exception")
        received = [await receive(client) for _ in range(3)]
        await client.disconnect()
        return received

    started, error, completed = async_to_sync(scenario)()
    assert started["type"] == "task_started"
    assert error["type"] == "error"
    assert error["data"] == {
        "execution_id": str(task.pk),
        "status": "failed",
        "message": "boom",
        "error_type": "exception",
        "fatal": True,
    }
    assert completed["type"] == "task_completed"
    assert completed["data"]["status"] == "failed"


def test_published_messages_reach_every_socket_of_the_session(active_session, key):
    async def scenario():
        first = await connect(f"/ws/sessions/{active_session.pk}/", key)
        second = await connect(f"/ws/{active_session.pk}", key)
        for client in (first, second):
            await next_of(client, "session_status")
        await sync_to_async(live.publish)(
            active_session.pk, "file_changed", {"path": "a.txt", "change": "deleted"}
        )
        got = [await receive(client) for client in (first, second)]
        for client in (first, second):
            await client.disconnect()
        return got

    for message in async_to_sync(scenario)():
        assert message["type"] == "file_changed"
        assert message["data"] == {"path": "a.txt", "change": "deleted"}


def test_files_written_uploaded_and_deleted_through_the_api_are_told_to_its_sockets(
    active_session, daemon, key, owner_api
):
    url = f"{API}/sessions/{active_session.pk}"

    def write(path: str, content: str) -> None:
        response = owner_api.post(
            f"{url}/files/content", {"path": path, "content": content}, format="json"
        )
        assert response.status_code == 200, response.content

    def upload(path: str) -> None:
        upload = SimpleUploadedFile("up.bin", b"\x00\x01", "application/octet-stream")
        response = owner_api.post(
            f"{url}/files/upload", {"file": upload, "path": path}, format="multipart"
        )
        assert response.status_code == 201, response.content

    def delete(path: str) -> None:
        response = owner_api.delete(f"{url}/files?path={path}&recursive=true")
        assert response.status_code == 204, response.content

    steps = [
        (write, ("notes/a.txt", "one")),
        (write, ("./notes/a.txt", "two")),
        (upload, ("up.bin",)),
        (delete, ("notes",)),
    ]

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        told = []
        for step, args in steps:
            await sync_to_async(step)(*args)
            told.append(await next_of(client, "file_changed"))
        await client.disconnect()
        return told

    told = async_to_sync(scenario)()
    assert [m["data"] for m in told] == [
        {"path": "notes/a.txt", "change": "created"},
        {"path": "notes/a.txt", "change": "modified"},
        {"path": "up.bin", "change": "created"},
        {"path": "notes", "change": "deleted"},
    ]
    assert operations.list_files(active_session, "")["entries"][0]["name"] == "up.bin"


def test_what_a_shell_command_changes_is_told_to_its_sockets(
    active_session, daemon, key, owner_api
):
    url = f"{API}/sessions/{active_session.pk}"
    for path in ("keep.txt", "gone.txt"):
        written = owner_api.post(
            f"{url}/files/content", {"path": path, "content": "x"}, format="json"
        )
        assert written.status_code == 200, written.content

    def shell(command: str) -> None:
        response = owner_api.post(f"{url}/shell", {"command": command}, format="json")
        assert response.status_code == 200, response.content
        assert response.json()["exit_code"] == 0, response.json()

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        await sync_to_async(shell)(
            "mkdir -p out/deep && echo hi > out/deep/a.txt && echo more >> keep.txt && rm gone.txt"
        )
        told = [await next_of(client, "file_changed") for _ in range(3)]
        # Too many changes to name: the whole workspace may have changed.
        await sync_to_async(shell)("seq 1 150 | sed s/^/f/ | xargs touch")
        told.append(await next_of(client, "file_changed"))
        await client.disconnect()
        return told

    told = async_to_sync(scenario)()
    assert [m["data"] for m in told] == [
        {"path": "gone.txt", "change": "deleted"},
        {"path": "keep.txt", "change": "modified"},
        {"path": "out", "change": "created"},  # what is in it goes without saying
        {"path": "", "change": "modified"},
    ]


# --- the session's status ----------------------------------------------------------------------


def test_a_change_of_the_session_is_sent_and_its_deletion_closes_the_socket(active_session, key):
    def stop():
        assert Session.mark_stopped(active_session.pk, host=TEST_HOST)
        announce(active_session.pk)

    def delete():
        assert Session.mark_deleting(active_session.pk)
        announce(active_session.pk)

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        assert (await receive(client))["data"]["status"] == "active"
        await sync_to_async(stop)()
        stopped = await next_of(client, "session_status")
        await sync_to_async(delete)()
        deleted = await next_of(client, "session_status")
        code = await closed(client)
        await client.disconnect()
        return stopped, deleted, code

    stopped, deleted, code = async_to_sync(scenario)()
    assert stopped["data"]["status"] == "stopped"
    assert deleted["data"]["status"] == "deleted"
    assert code == 1000


# --- following a process -----------------------------------------------------------------------


def test_a_followed_process_streams_its_output_then_its_exit(active_session, daemon, key):
    started = operations.start_process(active_session, "echo one; echo two; exit 4")

    async def scenario():
        client = await connect(f"/ws/{active_session.pk}", key)
        await next_of(client, "session_status")
        await client.send_json_to({"action": "follow", "pid": started["pid"]})
        messages = []
        while not messages or messages[-1]["type"] != "process_exited":
            messages.append(await receive(client))
        await client.disconnect()
        return messages

    messages = async_to_sync(scenario)()
    output = "".join(m["data"]["data"] for m in messages if m["type"] == "process_output")
    assert output.split() == ["one", "two"]
    assert all(m["data"]["pid"] == started["pid"] for m in messages)
    assert messages[-1]["data"]["exit_code"] == 4


def test_following_does_not_hold_up_the_socket(active_session, daemon, key):
    started = operations.start_process(active_session, "echo waiting; exec sleep 600")

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        await client.send_json_to({"action": "follow", "pid": started["pid"]})
        first = await next_of(client, "process_output")
        # The process runs on and its log stays open: other messages still come.
        await sync_to_async(live.publish)(
            active_session.pk, "file_changed", {"path": "b.txt", "change": "created"}
        )
        changed = await next_of(client, "file_changed")
        await client.send_json_to({"action": "unfollow", "pid": started["pid"]})
        await client.send_json_to({"action": "follow", "pid": 999_999})
        unknown = await next_of(client, "error")
        await client.disconnect()
        return first, changed, unknown

    first, changed, unknown = async_to_sync(scenario)()
    assert first["data"]["data"].strip() == "waiting"
    assert changed["data"]["path"] == "b.txt"
    assert unknown["data"]["code"] == "no_such_process"
    assert unknown["data"]["pid"] == 999_999
    operations.stop_process(active_session, started["pid"])


def test_following_in_a_session_that_is_not_active_is_refused(active_session, key):
    assert Session.mark_stopped(active_session.pk, host=TEST_HOST)

    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        await client.send_json_to({"action": "follow", "pid": 1})
        error = await next_of(client, "error")
        await client.disconnect()
        return error

    error = async_to_sync(scenario)()
    assert error["data"]["code"] == "session_not_active"


@pytest.mark.parametrize(
    "sent",
    [
        "not json",
        '["follow", 1]',
        '{"action": "dance"}',
        '{"action": "follow", "pid": "1"}',
        '{"action": "follow", "pid": true}',
        '{"action": "follow", "pid": 1, "tail": -1}',
    ],
)
def test_a_bad_message_is_answered_with_an_error_and_the_socket_stays(active_session, key, sent):
    async def scenario():
        client = await connect(f"/ws/sessions/{active_session.pk}/", key)
        await next_of(client, "session_status")
        await client.send_to(text_data=sent)
        error = await next_of(client, "error")
        await sync_to_async(live.publish)(active_session.pk, "file_changed", {"path": "c"})
        after = await next_of(client, "file_changed")
        await client.disconnect()
        return error, after

    error, after = async_to_sync(scenario)()
    assert error["data"]["code"] == "invalid_request"
    assert after["data"] == {"path": "c"}
