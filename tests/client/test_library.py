"""`aimos_client` as a program uses it, against the real server: deploy with progress and
the build log, runs, checkpoints, batches, chat, errors with the API's detail, code and
field errors, and a 429 waited out."""

from __future__ import annotations

from pathlib import Path

import pytest
from aimos_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    TransportError,
)

from tests.client import aio

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_deploy_reports_upload_progress_and_the_build_log(client):
    sent: list[tuple[int, int]] = []
    log: list[str] = []
    deployment = client.deploy(
        EXAMPLES / "counter",
        progress=lambda done, total: sent.append((done, total)),
        on_log=log.append,
    )
    assert deployment.created is True
    assert deployment.agent["name"] == "counter"
    assert deployment.agent["current_version"] == "v1"
    assert deployment.version["status"] == "ready"
    assert sent[-1] == (deployment.package.size, deployment.package.size)
    # One call a line, without its newline, each line once.
    assert log == deployment.version["build_log"].splitlines() != []
    assert not any("\n" in line for line in log)
    assert sorted(deployment.package.files) == ["agent/__init__.py", "agent/main.py", "aimos.yaml"]

    again = client.deploy(EXAMPLES / "counter")
    assert again.created is False
    assert again.version["version"] == "v2"
    assert [v["version"] for v in client.versions.list("counter")] == ["v1", "v2"]


def test_runs_checkpoints_restore_and_fork(client):
    client.deploy(EXAMPLES / "counter")
    run = client.execute("counter", {"to": 3, "delay": 0}, wait=60)
    assert run["status"] == "completed"
    assert run["output"]["steps"] == [1, 2, 3]

    checkpoints = client.executions.checkpoints(run["id"])
    assert [c["label"] for c in checkpoints] == ["step 1", "step 2", "step 3"]
    assert client.checkpoints.get(checkpoints[1]["id"])["state"] == {"count": 2, "steps": [1, 2]}

    restored = client.checkpoints.restore(checkpoints[1]["id"], input={"to": 4, "delay": 0})
    assert client.executions.wait(restored["id"])["output"]["resumed_from"] == 2
    forked = client.checkpoints.fork(checkpoints[0]["id"], state={"count": 5, "steps": [5]})
    finished = client.executions.wait(forked["id"])
    assert finished["output"]["steps"] == [5]
    assert finished["parent_id"] == run["id"]

    events = client.executions.events(run["id"])
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[-1].type == "run_completed"
    listed = client.executions.list(agent_id=run["agent_id"], status="completed")
    assert {r["id"] for r in listed} == {run["id"], restored["id"], forked["id"]}


def test_batches_and_chat(client):
    client.deploy(EXAMPLES / "echo")
    started = client.batches.start(input={"hello": "batch"})
    assert started["agent_count"] == 1
    batch = client.batches.get(started["execution_id"])
    client.executions.wait(batch["executions"][0]["id"])
    batch = client.batches.get(started["execution_id"])
    assert batch["finished"] is True and batch["completed"] == 1

    answer = client.chat("echo", {"say": "hi"})
    assert answer["status"] == "completed" and answer["response"] == {"say": "hi"}
    streamed = list(client.chat_stream("echo", "hello"))
    assert streamed[0].type == "run_started" and streamed[-1].type == "run_completed"
    assert streamed[-1].data["output"] == "hello"
    assert {event.execution_id for event in streamed} == {streamed[0].data["run_id"]}


def test_errors_carry_the_apis_detail_code_and_field_errors(client):
    with pytest.raises(BadRequestError) as refused:
        client.agents.create("Not A Valid Name")
    assert refused.value.status == 400
    assert refused.value.code == "validation_error"
    assert [error.field for error in refused.value.errors] == ["name"]

    client.agents.create("taken")
    with pytest.raises(BadRequestError) as duplicate:
        client.agents.create("taken")
    assert duplicate.value.detail == "An agent with this name already exists"
    assert str(duplicate.value.errors[0]) == "name: You already have an agent with this name."

    with pytest.raises(NotFoundError) as missing:
        client.executions.get("00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "not_found"

    client.deploy(EXAMPLES / "echo")
    run = client.execute("echo", [1], wait=60)
    with pytest.raises(ConflictError):
        client.executions.pause(run["id"])


def test_the_async_client_deploys_and_runs(live, api_key):
    async def scenario():
        async with AsyncClient(live.url, api_key=api_key) as aimos:
            deployment = await aimos.deploy(EXAMPLES / "tools")
            run = await aimos.execute("tools", {"expression": "6 * 7"})
            events = [event async for event in aimos.executions.stream(run["id"])]
            me = await aimos.auth.me()
            return deployment, events, me

    deployment, events, me = aio.run(scenario)
    assert deployment.version["status"] == "ready"
    assert [e.type for e in events if e.type.startswith("tool")] == ["tool_call", "tool_result"]
    assert events[-1].data["output"] == {"expression": "6 * 7", "value": 42}
    assert me["username"] == "owner"


@pytest.mark.django_db(transaction=True)
def test_a_429_is_waited_out_for_as_long_as_retry_after_says(live_server, owner, settings):
    from accounts.services import create_api_key

    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "user": "1/s"}
    key = create_api_key(owner, name="throttled")[1]

    impatient = Client(live_server.url, api_key=key, max_retries=0)
    impatient.auth.me()
    with pytest.raises(RateLimitedError) as throttled:
        impatient.auth.me()
    assert throttled.value.code == "throttled"
    assert 0 < throttled.value.retry_after <= 1

    statuses: list[int] = []
    patient = Client(live_server.url, api_key=key)
    patient._transport.http.event_hooks["response"].append(
        lambda response: statuses.append(response.status_code)
    )
    assert patient.auth.me()["username"] == "owner"
    assert patient.auth.me()["username"] == "owner"
    assert 429 in statuses and statuses[-1] == 200


def test_a_token_login_works_like_a_key(live, owner):
    with Client.login(live.url, "owner", "correct-horse-battery") as aimos:
        assert aimos.auth.me()["username"] == "owner"
        key = aimos.keys.create("minted")
    with Client(live.url, api_key=key["key"]) as aimos:
        assert aimos.auth.whoami()["username"] == "owner"
        aimos.keys.revoke(key["id"])
    with Client(live.url, api_key=key["key"]) as aimos, pytest.raises(AuthenticationError):
        aimos.auth.me()


def test_an_unreachable_server_is_a_transport_error():
    with Client("http://127.0.0.1:9", api_key="aimos_x_y") as aimos, pytest.raises(TransportError):
        aimos.system.status()
