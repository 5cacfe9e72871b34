"""The user feed (`/ws/events/`, `/api/ws/<user_id>`): who may connect, and the lifecycle
messages the services send; in-process (Channels' communicator on the real ASGI application,
Redis channel layer and PostgreSQL) and over a real socket against the live stack."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection

from agents.services import create_agent
from aimos.upkeep import current_metrics
from executions import events as event_log
from executions import outcomes, services
from executions.models import Execution
from executions.tests.live import Client, deploy, wait_for_status
from executions.tests.wsclient import (
    api_key_of,
    communicator,
    key_header,
    live_socket,
    read_until,
    ready_agent,
    receive,
    refusal,
)
from notifications import feed

LIFECYCLE = {
    "agent_created",
    "build_started",
    "build_completed",
    "execution_started",
    "agent_completed",
    "execution_completed",
}


def of_types(messages, *types):
    return [message for message in messages if message["type"] in types]


# --- in process -------------------------------------------------------------------------------

in_process = pytest.mark.django_db(transaction=True)


@in_process
def test_the_feed_refuses_a_socket_without_credentials():
    assert async_to_sync(refusal)("/ws/events/") == {"type": "websocket.close", "code": 4401}


@in_process
def test_the_reference_path_refuses_another_users_id(owner, other):
    output = async_to_sync(refusal)(f"/api/ws/{other.pk}", headers=key_header(api_key_of(owner)))
    assert output == {"type": "websocket.close", "code": 4403}


@in_process
def test_the_reference_path_needs_credentials_too(owner):
    output = async_to_sync(refusal)(f"/api/ws/{owner.pk}")
    assert output == {"type": "websocket.close", "code": 4401}


def _feed_while(path, headers, action, count):
    """Connect to the feed, run `action` (sync), return the next `count` messages."""

    async def scenario():
        client = communicator(path, headers)
        connected, _ = await client.connect()
        assert connected
        await sync_to_async(action)()
        messages = [await receive(client) for _ in range(count)]
        await client.disconnect()
        return messages

    return async_to_sync(scenario)()


@in_process
@pytest.mark.parametrize("ref", ["id", "username"])
def test_the_reference_path_serves_the_users_own_feed(owner, ref):
    name = str(owner.pk) if ref == "id" else owner.username
    [message] = _feed_while(
        f"/api/ws/{name}",
        key_header(api_key_of(owner)),
        lambda: create_agent(owner, name="fresh"),
        1,
    )
    assert message["type"] == "agent_created"
    assert message["data"]["agent_name"] == "fresh"
    assert set(message) == {"type", "data", "timestamp"}


@in_process
def test_a_run_shows_in_the_feed_as_started_and_completed_not_as_its_events(owner):
    agent = ready_agent(owner)
    runs = []

    def action():
        run = services.start_execution(owner, agent, input="x", enqueue=False)
        runs.append(run)
        event_log.record_events(run.pk, [("run_started", {}), ("content_delta", {"content": "hi"})])
        outcomes.finish(run, "completed", output="hi", duration_ms=12)

    started, completed = _feed_while("/ws/events/", key_header(api_key_of(owner)), action, 2)
    run = runs[0]
    assert started == {
        "type": "execution_started",
        "data": {
            "execution_id": str(run.pk),
            "agent_id": str(agent.pk),
            "agent_name": agent.name,
            "agent_count": 1,
            "parallel": False,
        },
        "timestamp": started["timestamp"],
    }
    assert completed["type"] == "execution_completed"
    assert completed["data"] == {
        "execution_id": str(run.pk),
        "agent_id": str(agent.pk),
        "agent_name": agent.name,
        "status": "completed",
        "duration_ms": 12,
    }


@in_process
def test_another_users_activity_is_not_in_my_feed(owner, other):
    def action():
        create_agent(other, name="theirs")
        create_agent(owner, name="mine")

    [message] = _feed_while("/ws/events/", key_header(api_key_of(owner)), action, 1)
    assert message["data"]["agent_name"] == "mine"


@in_process
def test_a_batch_reports_each_run_then_its_totals(owner, rq_queues):
    agents = [ready_agent(owner, name) for name in ("a", "b", "c")]
    batch_ids = []

    def action():
        batch = services.start_batch(owner, agent_ids=[agent.pk for agent in agents])
        batch_ids.append(batch.pk)
        for run, status in zip(
            batch.executions.order_by("created_at"),
            ["completed", "failed", "completed"],
            strict=True,
        ):
            outcomes.finish(run, status, duration_ms=7, error_type="exception")

    try:
        messages = _feed_while("/ws/events/", key_header(api_key_of(owner)), action, 5)
    finally:
        for queue in rq_queues:
            queue.empty()
    batch_id = str(batch_ids[0])
    assert [message["type"] for message in messages] == [
        "execution_started",
        "agent_completed",
        "agent_completed",
        "agent_completed",
        "execution_completed",
    ]
    assert messages[0]["data"] == {
        "execution_id": batch_id,
        "agent_count": 3,
        "parallel": True,
        "agent_ids": [str(agent.pk) for agent in agents],
    }
    assert [m["data"]["status"] for m in messages[1:4]] == ["completed", "failed", "completed"]
    assert {m["data"]["execution_id"] for m in messages[1:4]} == {batch_id}
    assert {m["data"]["agent_name"] for m in messages[1:4]} == {"a", "b", "c"}
    assert messages[4]["data"] == {
        "execution_id": batch_id,
        "total_agents": 3,
        "successful": 2,
        "failed": 1,
        "success_rate": 66.7,
    }


@in_process
def test_runs_of_a_batch_ending_at_once_announce_the_batch_exactly_once(owner, rq_queues):
    agents = [ready_agent(owner, f"agent-{n}") for n in range(6)]
    batch = services.start_batch(owner, agent_ids=[agent.pk for agent in agents])
    for queue in rq_queues:
        queue.empty()
    runs = list(Execution.objects.filter(batch=batch))
    key = api_key_of(owner)
    gate = threading.Barrier(len(runs))

    def end(run):
        try:
            gate.wait()
            outcomes.finish(run, "completed", duration_ms=1)
        finally:
            connection.close()

    def action():
        threads = [threading.Thread(target=end, args=(run,)) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # A marker after everything the runs sent: the feed holds nothing more than this.
        create_agent(owner, name="marker")

    messages = _feed_while("/ws/events/", key_header(key), action, len(runs) + 2)
    assert len(of_types(messages, "agent_completed")) == len(runs)
    [totals] = of_types(messages, "execution_completed")
    assert totals["data"]["total_agents"] == len(runs)
    assert totals["data"]["success_rate"] == 100.0
    assert messages[-1]["type"] == "agent_created"


@in_process
def test_metrics_are_broadcast_to_every_feed_once_per_interval(owner, other, settings):
    settings.AIMOS_METRICS_INTERVAL = 60
    sent = []

    async def scenario():
        mine = communicator("/ws/events/", key_header(await sync_to_async(api_key_of)(owner)))
        theirs = communicator("/ws/events/", key_header(await sync_to_async(api_key_of)(other)))
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        sent.append(await sync_to_async(feed.broadcast_metrics_if_due)(current_metrics))
        sent.append(await sync_to_async(feed.broadcast_metrics_if_due)(current_metrics))
        messages = [await receive(mine), await receive(theirs)]
        await mine.disconnect()
        await theirs.disconnect()
        return messages

    messages = async_to_sync(scenario)()
    assert sent == [True, False]
    for message in messages:
        assert message["type"] == "metrics_update"
        data = message["data"]
        assert set(data) == {"cpu_usage", "memory_usage", "system_health_score", "timestamp"}
        assert 0 <= data["cpu_usage"] <= 100 and 0 < data["memory_usage"] <= 100
        assert 0 <= data["system_health_score"] <= 1
    assert messages[0] == messages[1]


# --- live: daphne and RQ workers, a real WebSocket client ------------------------------------


@pytest.fixture
def client(live, owner):
    return Client(live, owner)


def key_of(client: Client) -> str:
    return client.headers["X-API-Key"]


def lifecycle(messages):
    return [message for message in messages if message["type"] in LIFECYCLE]


@pytest.mark.slow
def test_deploying_an_agent_shows_creation_and_build_in_the_feed(live, client):
    with live_socket(live, "/ws/events/", key_of(client)) as socket:
        agent_id = deploy(client, "echo")
        messages = read_until(
            socket, lambda got: any(m["type"] == "build_completed" for m in got), timeout=120
        )
    events = lifecycle(messages)
    assert [message["type"] for message in events] == [
        "agent_created",
        "build_started",
        "build_completed",
    ]
    assert all(message["data"]["agent_id"] == agent_id for message in events)
    assert events[1]["data"] == {
        "agent_id": agent_id,
        "agent_name": "echo",
        "version": "v1",
        "status": "building",
    }
    assert events[2]["data"]["status"] == "ready"


@pytest.mark.slow
def test_a_run_shows_in_the_live_feed(live, client):
    agent_id = deploy(client, "story")
    with live_socket(live, "/ws/events/", key_of(client)) as socket:
        response = client.post(
            f"/agents/{agent_id}/execute", json={"input": {"topic": "an owl", "delay": 0.01}}
        )
        assert response.status_code in (201, 202), response.text
        run_id = response.json()["id"]
        messages = read_until(
            socket, lambda got: any(m["type"] == "execution_completed" for m in got)
        )
    events = lifecycle(messages)
    assert [message["type"] for message in events] == ["execution_started", "execution_completed"]
    assert events[0]["data"]["execution_id"] == run_id
    run = wait_for_status(client, run_id, {"completed"})
    assert events[1]["data"] == {
        "execution_id": run_id,
        "agent_id": agent_id,
        "agent_name": "story",
        "status": "completed",
        "duration_ms": run["duration_ms"],
    }
    # The run's own events (deltas and all) stay on its stream, out of the feed.
    assert not [m for m in messages if m["type"] not in LIFECYCLE | {"metrics_update"}]


@pytest.mark.slow
def test_a_batch_shows_in_the_live_feed_with_its_success_rate(live, client):
    story = deploy(client, "story")
    echo = deploy(client, "echo")
    with live_socket(live, "/ws/events/", key_of(client)) as socket:
        response = client.post(
            "/execute", json={"agent_ids": [story, echo], "parallel": True, "input": "a crow"}
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["execution_id"]
        messages = read_until(
            socket, lambda got: any(m["type"] == "execution_completed" for m in got)
        )
    events = lifecycle(messages)
    assert [message["type"] for message in events] == [
        "execution_started",
        "agent_completed",
        "agent_completed",
        "execution_completed",
    ]
    assert events[0]["data"]["execution_id"] == batch_id
    assert events[0]["data"]["agent_count"] == 2 and events[0]["data"]["parallel"] is True
    finished = events[1:3]
    assert {m["data"]["agent_id"] for m in finished} == {story, echo}
    assert {m["data"]["execution_id"] for m in finished} == {batch_id}
    assert all(m["data"]["status"] == "completed" for m in finished)
    assert all(isinstance(m["data"]["duration_ms"], int) for m in finished)
    assert events[3]["data"] == {
        "execution_id": batch_id,
        "total_agents": 2,
        "successful": 2,
        "failed": 0,
        "success_rate": 100.0,
    }


@pytest.mark.slow
def test_the_live_feed_carries_metrics_updates_from_the_workers(live, client):
    with live_socket(live, "/ws/events/", key_of(client)) as socket:
        messages = read_until(
            socket, lambda got: any(m["type"] == "metrics_update" for m in got), timeout=30
        )
    [update] = of_types(messages, "metrics_update")[:1]
    assert set(update["data"]) == {"cpu_usage", "memory_usage", "system_health_score", "timestamp"}
    assert 0 < update["data"]["system_health_score"] <= 1


@pytest.mark.slow
def test_the_reference_path_serves_the_feed_on_the_live_server(live, client, owner):
    with live_socket(live, f"/api/ws/{owner.pk}", key_of(client)) as socket:
        response = client.post("/agents", json={"name": "via-reference-path"})
        assert response.status_code == 201, response.text
        messages = read_until(socket, lambda got: bool(lifecycle(got)))
    assert lifecycle(messages)[0]["type"] == "agent_created"
    assert lifecycle(messages)[0]["data"]["agent_id"] == response.json()["id"]
