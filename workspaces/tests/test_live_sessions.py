"""Sessions on the live stack: daphne, the session host (real sandboxes on the process backend,
real workspace disks) and the upkeep, each in a process of its own. Waits are on the session's
own announcements (`workspaces.waits`), never on the clock."""

import os
import signal
from pathlib import Path

import pytest
import requests

from executions.tests.live import Client, sandbox_processes, sse_frames
from sandbox.tests.helpers import frozen
from workspaces.choices import SessionStatus
from workspaces.disks import disk_of
from workspaces.models import Session
from workspaces.waits import wait_until

pytestmark = pytest.mark.slow

WAIT = 60
DISK_TOOLS = {"mount", "umount", "e2fsck", "mkfs.ext4"}


@pytest.fixture
def client(live, owner):
    return Client(live, owner)


def create(client, **body) -> dict:
    response = client.post("/sessions", json=body)
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["status"] == "active", session
    return session


def settle(session_id, statuses) -> Session:
    """The session once it is in one of `statuses` (woken by its announcements)."""
    session = Session.objects.get(pk=session_id)
    seen = wait_until(session, lambda s: s.status in statuses, WAIT)
    assert seen is not None and seen.status in statuses, seen and (seen.status, seen.error)
    return seen


def running_in(session: Session) -> list[int]:
    """Processes of the session's sandbox on this host: their command lines name its folder
    (the host's own tools working on its disk, which name it too, left out)."""
    running = []
    for pid in sandbox_processes(str(session.directory)):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() not in DISK_TOOLS:
                running.append(pid)
        except OSError:  # gone meanwhile
            pass
    return running


def test_a_session_keeps_its_files_across_stop_and_start_and_leaves_nothing_when_deleted(client):
    created = create(client, workspace_mb=64)
    base = f"/sessions/{created['id']}"
    session = Session.objects.get(pk=created["id"])
    assert disk_of(session.pk).mounted()

    written = client.post(
        f"{base}/files/content", json={"path": "app/hello.py", "content": "print(6 * 7)\n"}
    )
    assert written.status_code == 200, written.text
    shell = client.post(f"{base}/shell", json={"command": "cd app && python3 hello.py"}).json()
    assert (shell["exit_code"], shell["stdout"]) == (0, "42\n")

    stopped = client.post(f"{base}/stop")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    assert not disk_of(session.pk).mounted()
    assert running_in(session) == []
    assert client.get(f"{base}/files").status_code == 409

    started = client.post(f"{base}/start")
    assert started.status_code == 200
    assert started.json()["status"] == "active", started.json()
    read = client.get(f"{base}/files/content", params={"path": "app/hello.py"}).json()
    assert read["content"] == "print(6 * 7)\n"

    assert client.delete(base).status_code == 204
    assert client.get(base).status_code == 404
    assert not session.directory.exists()
    assert running_in(session) == []
    assert not Session.objects.filter(pk=session.pk).exists()


def test_a_paused_session_is_frozen_and_refuses_work_until_it_resumes(client):
    created = create(client)
    base = f"/sessions/{created['id']}"
    session = Session.objects.get(pk=created["id"])
    started = client.post(f"{base}/processes", json={"command": "exec sleep 600"})
    assert started.status_code == 201, started.text
    assert client.post(f"{base}/resume").status_code == 409  # not paused

    paused = client.post(f"{base}/pause")

    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    pids = running_in(session)
    assert pids and all(frozen(pid) for pid in pids)
    refused = client.post(f"{base}/shell", json={"command": "true"})
    assert refused.status_code == 409
    assert (refused.json()["detail"], refused.json()["code"]) == (
        "The session is paused; resume it first",
        "session_not_active",
    )
    assert client.post(f"{base}/pause").status_code == 409  # paused already

    resumed = client.post(f"{base}/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "active"
    assert not any(frozen(pid) for pid in running_in(session))
    listed = client.get(f"{base}/processes").json()
    assert [p["status"] for p in listed] == ["running"]  # its process lives on

    # A paused session stops as any other: its processes end, its workspace is kept.
    assert client.post(f"{base}/pause").json()["status"] == "paused"
    assert client.post(f"{base}/stop").json()["status"] == "stopped"
    assert running_in(session) == []
    assert not disk_of(session.pk).mounted()


def test_the_workspace_is_the_size_asked_for(client):
    created = create(client, workspace_mb=32)
    base = f"/sessions/{created['id']}"

    filled = client.post(
        f"{base}/shell",
        json={"command": "head -c 40000000 /dev/zero > big; echo $?", "timeout": 60},
    ).json()

    assert filled["stdout"].strip() != "0"  # no space left on the 32 MB disk
    assert "No space left" in filled["stderr"]


def test_the_processes_of_a_session_end_when_it_stops(client):
    created = create(client)
    base = f"/sessions/{created['id']}"
    session = Session.objects.get(pk=created["id"])
    started = client.post(f"{base}/processes", json={"command": "exec sleep 600"})
    assert started.status_code == 201, started.text

    assert client.post(f"{base}/stop").json()["status"] == "stopped"

    assert running_in(session) == []
    assert client.post(f"{base}/start").json()["status"] == "active"
    assert client.get(f"{base}/processes").json() == []


def test_an_idle_session_is_stopped_with_its_workspace_kept(client):
    created = create(client, idle_timeout_seconds=1)
    base = f"/sessions/{created['id']}"
    client.post(f"{base}/files/content", json={"path": "kept.txt", "content": "still here"})

    idle = settle(created["id"], {SessionStatus.STOPPED, SessionStatus.FAILED})

    assert (idle.status, idle.error) == (SessionStatus.STOPPED, "")
    assert client.post(f"{base}/start").json()["status"] == "active"
    read = client.get(f"{base}/files/content", params={"path": "kept.txt"}).json()
    assert read["content"] == "still here"


def test_a_session_whose_sandbox_died_fails(client):
    created = create(client)
    session = Session.objects.get(pk=created["id"])
    pids = running_in(session)
    assert pids

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    failed = settle(created["id"], {SessionStatus.FAILED, SessionStatus.STOPPED})
    assert (failed.status, failed.error) == (SessionStatus.FAILED, "its sandbox exited")
    assert not disk_of(session.pk).mounted()
    assert client.post(f"/sessions/{created['id']}/start").json()["status"] == "active"


def test_the_sessions_of_a_host_that_died_fail_and_nothing_of_them_runs(client, live):
    created = create(client)
    session = Session.objects.get(pk=created["id"])

    os.killpg(live.sessionhost.pid, signal.SIGKILL)
    live.sessionhost.wait()

    failed = settle(created["id"], {SessionStatus.FAILED})
    assert failed.error == "its host stopped"
    assert running_in(session) == []
    live.replace_dead_workers()
    assert client.post(f"/sessions/{created['id']}/start").json()["status"] == "active"


def test_a_host_asked_to_stop_stops_its_sessions_and_keeps_their_workspaces(client, live):
    created = create(client)
    base = f"/sessions/{created['id']}"
    client.post(f"{base}/files/content", json={"path": "kept.txt", "content": "kept"})
    session = Session.objects.get(pk=created["id"])

    os.killpg(live.sessionhost.pid, signal.SIGTERM)
    assert live.sessionhost.wait(timeout=WAIT) == 0

    session.refresh_from_db()
    assert (session.status, session.error) == (SessionStatus.STOPPED, "")
    assert not disk_of(session.pk).mounted()
    assert running_in(session) == []
    live.replace_dead_workers()
    assert client.post(f"{base}/start").json()["status"] == "active"
    assert client.get(f"{base}/files/content", params={"path": "kept.txt"}).json()["content"] == (
        "kept"
    )


def test_shell_output_streams_through_the_server_as_it_comes(client):
    created = create(client)
    url = f"/sessions/{created['id']}/shell"
    headers = {"Accept": "text/event-stream"}

    # The first line arrives while the command still runs; leaving ends it.
    with client.post(
        url,
        json={"command": "echo first; exec sleep 300", "timeout": 600},
        headers=headers,
        stream=True,
    ) as response:
        assert response.status_code == 200
        first = next(frame for frame in sse_frames(response) if "event" in frame)
        assert (first["event"], first["data"]) == ("stdout", {"data": "first\n"})

    with client.post(url, json={"command": "echo done; exit 2"}, headers=headers) as response:
        frames = [frame for frame in sse_frames(response) if "event" in frame]
    assert frames[-1]["event"] == "exit"
    assert frames[-1]["data"]["exit_code"] == 2


def test_a_followed_log_streams_until_the_process_exits(client):
    created = create(client)
    base = f"/sessions/{created['id']}"
    started = client.post(
        f"{base}/processes", json={"command": "for i in 1 2 3; do echo line $i; done"}
    ).json()

    with client.get(
        f"{base}/processes/{started['pid']}/logs", params={"follow": "true"}, stream=True
    ) as response:
        frames = [frame for frame in sse_frames(response) if "event" in frame]

    text = "".join(frame["data"]["data"] for frame in frames if frame["event"] == "log")
    assert text == "line 1\nline 2\nline 3\n"
    assert frames[-1]["event"] == "end"
    assert frames[-1]["data"]["status"] == "exited"


def test_the_crogia_paths_serve_the_same_session(client, live):
    crogia = requests.Session()
    crogia.headers.update(client.headers)
    created = crogia.post(f"{live.url}/api/sessions", json={}, timeout=60)
    assert created.status_code == 201, created.text
    base = f"{live.url}/api/sessions/{created.json()['id']}"

    written = crogia.post(
        f"{base}/files/content", json={"path": "c.txt", "content": "crogia"}, timeout=60
    )
    shell = crogia.post(f"{base}/shell", json={"command": "cat c.txt"}, timeout=60)
    listed = crogia.get(f"{live.url}/api/sessions", timeout=60)

    assert written.status_code == 200
    assert shell.json()["stdout"] == "crogia"
    assert [s["id"] for s in listed.json()] == [created.json()["id"]]
    assert client.get(f"/sessions/{created.json()['id']}/files").json()["entries"][0]["name"] == (
        "c.txt"
    )
    assert crogia.delete(base, timeout=60).status_code == 204


def test_a_user_runs_at_most_the_allowed_number_of_sessions(client, settings):
    for _ in range(settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER):
        create(client)

    refused = client.post("/sessions", json={})

    assert refused.status_code == 409
    assert refused.json()["code"] == "session_limit"
