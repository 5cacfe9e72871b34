"""Runs on the live stack: SSE streaming and reconnects, pause/resume, cancel, the longest
pause, and a worker killed with SIGKILL in the middle of a run."""

import os
import signal
import time
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from executions.models import Execution
from executions.tests.live import (
    Client,
    deploy,
    sandbox_processes,
    sse_frames,
    wait_for_events,
    wait_for_status,
)

pytestmark = pytest.mark.slow

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def client(live, owner):
    return Client(live, owner)


def execute(client, agent_id, **body):
    response = client.post(f"/agents/{agent_id}/execute", json=body)
    assert response.status_code in (201, 202), response.text
    return response.json()


def test_story_streams_over_sse_until_the_end(client):
    agent_id = deploy(client, "story")
    run = execute(client, agent_id, input={"topic": "a heron", "delay": 0.02})
    with client.get(f"/executions/{run['id']}/events", headers=SSE, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = [frame for frame in sse_frames(response) if "event" in frame]
    seqs = [int(frame["id"]) for frame in frames]
    assert seqs == list(range(1, len(seqs) + 1))
    assert frames[0]["event"] == "run_started"
    assert frames[-1]["event"] == "run_completed"
    text = "".join(
        frame["data"]["content"] for frame in frames if frame["event"] == "content_delta"
    )
    assert text == frames[-1]["data"]["output"]
    assert "a heron" in text
    assert frames[-1]["data"]["metrics"]["events"] == len(frames)


def test_sse_reconnect_with_last_event_id_loses_and_duplicates_nothing(client):
    agent_id = deploy(client, "story")
    run = execute(client, agent_id, input={"topic": "a fox", "delay": 0.03})
    url = f"/executions/{run['id']}/events"
    first = []
    with client.get(url, headers=SSE, stream=True) as response:
        for frame in sse_frames(response):
            if "event" in frame:
                first.append(frame)
            if len(first) == 12:
                break  # the client drops the connection mid-run
    assert first[-1]["event"] == "content_delta"
    headers = {**SSE, "Last-Event-ID": first[-1]["id"]}
    with client.get(url, headers=headers, stream=True) as response:
        rest = [frame for frame in sse_frames(response) if "event" in frame]
    frames = first + rest
    assert [int(frame["id"]) for frame in frames] == list(range(1, len(frames) + 1))
    assert rest[-1]["event"] == "run_completed"
    text = "".join(f["data"]["content"] for f in frames if f["event"] == "content_delta")
    assert text == rest[-1]["data"]["output"]


def test_a_finished_run_replays_from_after_and_ends(client):
    agent_id = deploy(client, "echo")
    run = execute(client, agent_id, input={"hello": "world"}, wait=30)
    assert run["status"] == "completed"
    with client.get(
        f"/executions/{run['id']}/events", headers=SSE, params={"after": 1}, stream=True
    ) as response:
        frames = [frame for frame in sse_frames(response) if "event" in frame]
    assert frames[0]["id"] == "2"
    assert frames[-1]["event"] == "run_completed"
    assert frames[-1]["data"]["output"] == {"hello": "world"}


def test_execute_with_wait_returns_201_with_the_finished_run(client):
    agent_id = deploy(client, "echo")
    response = client.post(f"/agents/{agent_id}/execute", json={"input": [1, 2], "wait": 30})
    assert response.status_code == 201
    assert response.json()["status"] == "completed"
    assert response.json()["output"] == [1, 2]


def test_chat_streams_the_run(client):
    deploy(client, "story")
    body = {"agent_id": "story", "message": "a moth", "stream": True}
    with client.post("/chat", json=body, headers=SSE, stream=True) as response:
        assert response.status_code == 200
        frames = [frame for frame in sse_frames(response) if "event" in frame]
    assert frames[0]["event"] == "run_started"
    assert frames[-1]["event"] == "run_completed"
    assert "metrics" in frames[-1]["data"]
    assert "a moth" in "".join(f["data"].get("content", "") for f in frames)


def test_pause_freezes_the_run_and_resume_lets_it_finish(client):
    agent_id = deploy(client, "slow")
    run = execute(client, agent_id, input={"seconds": 2.5, "interval": 0.1}, timeout_seconds=4)
    wait_for_events(client, run["id"], "content_delta", 3)

    paused = client.post(f"/executions/{run['id']}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    ticks = len(wait_for_events(client, run["id"], "content_delta", 1))
    stay_paused_past_its_timeout(client, run["id"])
    assert len(wait_for_events(client, run["id"], "content_delta", 1)) == ticks
    assert client.post(f"/executions/{run['id']}/pause").status_code == 409

    resumed = client.post(f"/executions/{run['id']}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "running"
    finished = wait_for_status(client, run["id"], ["completed", "failed", "timed_out"])
    assert finished["status"] == "completed", finished
    # The run lived longer than its timeout; its own clock counted only the time it ran.
    lived = moment(finished["finished_at"]) - moment(finished["started_at"])
    assert lived > timedelta(seconds=finished["timeout_seconds"])
    assert finished["duration_ms"] < finished["timeout_seconds"] * 1000
    types = [event["type"] for event in client.get(f"/executions/{run['id']}/events").json()]
    assert types.index("run_paused") < types.index("run_resumed") < types.index("run_completed")


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def stay_paused_past_its_timeout(client, run_id: str) -> None:
    """Return once the paused run has existed longer than its timeout (by its `started_at`):
    had paused time counted, it would be over."""
    run = client.get(f"/executions/{run_id}").json()
    over = moment(run["started_at"]) + timedelta(seconds=run["timeout_seconds"])
    while timezone.now() <= over:
        assert client.get(f"/executions/{run_id}").json()["status"] == "paused"
        time.sleep(0.05)


def test_a_run_paused_too_long_ends_timed_out(client):
    agent_id = deploy(client, "slow")
    run = execute(client, agent_id, input={"seconds": 30})
    wait_for_events(client, run["id"], "content_delta", 1)
    assert client.post(f"/executions/{run['id']}/pause").json()["status"] == "paused"
    finished = wait_for_status(client, run["id"], ["timed_out", "completed", "failed"], timeout=20)
    assert finished["status"] == "timed_out"
    assert "paused longer" in finished["error_message"]
    assert sandbox_processes() == []
    events = {e["type"]: e for e in client.get(f"/executions/{run['id']}/events").json()}
    paused_for = moment(events["run_timed_out"]["timestamp"]) - moment(
        events["run_paused"]["timestamp"]
    )
    assert paused_for >= timedelta(seconds=settings.AIMOS_MAX_PAUSE_SECONDS)


def test_cancel_of_a_running_run_returns_when_every_process_is_gone(client):
    agent_id = deploy(client, "slow")
    run = execute(client, agent_id, input={"seconds": 60})
    wait_for_events(client, run["id"], "content_delta", 2)
    assert sandbox_processes() != []

    response = client.post(f"/executions/{run['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert sandbox_processes() == []
    events = client.get(f"/executions/{run['id']}/events").json()
    assert events[-1]["type"] == "run_cancelled"
    assert client.post(f"/executions/{run['id']}/cancel").status_code == 409


def test_a_worker_killed_mid_run_leaves_the_run_lost_not_running(client, live):
    agent_id = deploy(client, "slow")
    run = execute(client, agent_id, input={"seconds": 60})
    wait_for_events(client, run["id"], "content_delta", 2)
    holder = int(Execution.objects.get(pk=run["id"]).worker.rsplit(":", 1)[1])
    worker = next(w for w in live.workers if w.pid in (holder, _parent(holder)))
    os.kill(holder, signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    # Nobody renews the lease any more: its last expiry stays until the run is ended.
    lease_expired_at = Execution.objects.get(pk=run["id"]).lease_expires_at

    lost = wait_for_status(client, run["id"], ["failed"], timeout=30)
    assert lost["error_type"] == "lost"
    # Ended by the sweep once the lease had expired, within a few upkeep passes of it.
    ended_at = moment(lost["finished_at"])
    assert lease_expired_at <= ended_at
    assert ended_at - lease_expired_at < timedelta(seconds=10 * settings.AIMOS_MAINTENANCE_INTERVAL)
    assert sandbox_processes() == []
    assert client.get(f"/executions/{run['id']}/events").json()[-1]["type"] == "run_failed"
    live.replace_dead_workers()
    again = execute(client, deploy(client, "echo"), input="still works", wait=30)
    assert again["status"] == "completed"


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
