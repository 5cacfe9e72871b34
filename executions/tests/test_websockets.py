"""`/ws/executions/<id>/`: who may connect, and the run's events from the log then live,
each `seq` once; in-process (Channels' communicator on the real ASGI application, Redis
channel layer and PostgreSQL) and over a real socket against the live daphne."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction
from django.test import Client as DjangoClient
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import ApiKey
from accounts.services import issue_tokens, revoke_access_token, revoke_api_key
from executions import events as event_log
from executions import outcomes, services
from executions.models import Execution, ExecutionEvent
from executions.tests.live import Client, deploy, wait_for_status
from executions.tests.wsclient import (
    api_key_of,
    closed,
    communicator,
    key_header,
    live_socket,
    read_until,
    read_until_closed,
    ready_agent,
    receive,
    refusal,
)

pytestmark = pytest.mark.django_db(transaction=True)

DELTAS = ["Once ", "upon ", "a ", "time"]


@pytest.fixture
def run(owner):
    """A pending run of the owner's agent (not queued: these tests write its events)."""
    return services.start_execution(owner, ready_agent(owner), input="x", enqueue=False)


def path_of(execution, query: str = "") -> str:
    return f"/ws/executions/{execution.pk}/" + (f"?{query}" if query else "")


def record(execution, *items):
    return event_log.record_events(execution.pk, list(items))


def deltas(words):
    return [("content_delta", {"content": word}) for word in words]


def complete(execution, output):
    assert outcomes.finish(execution, "completed", output=output, duration_ms=5)


# --- who may connect --------------------------------------------------------------------------


def test_no_credentials_close_4401_before_any_data(run):
    assert async_to_sync(refusal)(path_of(run)) == {"type": "websocket.close", "code": 4401}


def test_a_malformed_token_closes_4401(run):
    output = async_to_sync(refusal)(path_of(run, "token=not-a-jwt"))
    assert output == {"type": "websocket.close", "code": 4401}


def test_an_expired_access_token_closes_4401(run, owner):
    token = AccessToken.for_user(owner)
    token.set_exp(from_time=timezone.now() - timedelta(hours=2))
    output = async_to_sync(refusal)(path_of(run), subprotocols=["bearer", str(token)])
    assert output == {"type": "websocket.close", "code": 4401}


def test_a_refresh_token_is_not_an_access_token(run, owner):
    output = async_to_sync(refusal)(path_of(run, f"token={RefreshToken.for_user(owner)}"))
    assert output == {"type": "websocket.close", "code": 4401}


def test_an_access_token_revoked_at_logout_closes_4401(run, owner):
    raw = issue_tokens(owner).access_token
    revoke_access_token(AccessToken(raw))
    output = async_to_sync(refusal)(path_of(run), subprotocols=[f"access_token.{raw}"])
    assert output == {"type": "websocket.close", "code": 4401}


def test_a_revoked_api_key_closes_4401(run, owner):
    raw = api_key_of(owner)
    revoke_api_key(ApiKey.objects.get(user=owner))
    output = async_to_sync(refusal)(path_of(run), headers=key_header(raw))
    assert output == {"type": "websocket.close", "code": 4401}


def test_a_wrong_api_key_is_refused_even_with_a_session(run, owner):
    browser = DjangoClient()
    browser.force_login(owner)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    headers = [(b"cookie", cookie), *key_header("aimos_nope_nope")]
    output = async_to_sync(refusal)(path_of(run), headers=headers)
    assert output == {"type": "websocket.close", "code": 4401}


def test_another_users_execution_looks_like_a_missing_one(run, other):
    key = api_key_of(other)
    foreign = async_to_sync(refusal)(path_of(run), headers=key_header(key))
    missing = async_to_sync(refusal)(
        "/ws/executions/00000000-0000-0000-0000-000000000000/", headers=key_header(key)
    )
    malformed = async_to_sync(refusal)("/ws/executions/nope/", headers=key_header(key))
    assert foreign == missing == malformed == {"type": "websocket.close", "code": 4404}


def test_a_foreign_origin_closes_4403_even_with_valid_credentials(run, owner):
    headers = [(b"origin", b"https://evil.example"), *key_header(api_key_of(owner))]
    output = async_to_sync(refusal)(path_of(run), headers=headers)
    assert output == {"type": "websocket.close", "code": 4403}


def test_a_foreign_origin_gets_the_code_through_its_offered_subprotocol(run, owner):
    token = issue_tokens(owner).access_token

    async def scenario():
        client = communicator(
            path_of(run), [(b"origin", b"https://evil.example")], ["bearer", token]
        )
        connected, subprotocol = await client.connect()
        code = await closed(client)
        await client.disconnect()
        return connected, subprotocol, code

    assert async_to_sync(scenario)() == (True, "bearer", 4403)


def test_an_unknown_path_closes_4404():
    output = async_to_sync(refusal)("/ws/nothing-here/")
    assert output == {"type": "websocket.close", "code": 4404}


def test_a_malformed_after_closes_4400(run, owner):
    output = async_to_sync(refusal)(path_of(run, "after=x"), headers=key_header(api_key_of(owner)))
    assert output == {"type": "websocket.close", "code": 4400}


def _first_event(path, headers=(), subprotocols=None):
    async def scenario():
        client = communicator(path, headers, subprotocols)
        connected, subprotocol = await client.connect()
        event = await receive(client)
        await client.disconnect()
        return connected, subprotocol, event

    return async_to_sync(scenario)()


@pytest.mark.parametrize("form", ["header", "query"])
def test_an_api_key_in_the_header_or_the_query_opens_the_stream(run, owner, form):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    key = api_key_of(owner)
    if form == "header":
        connected, _, event = _first_event(path_of(run), headers=key_header(key))
    else:
        connected, _, event = _first_event(path_of(run, f"api_key={key}"))
    assert connected and event["seq"] == 1 and event["type"] == "run_started"


@pytest.mark.parametrize(
    ("offer", "echoed"),
    [
        (lambda token: ["bearer", token], "bearer"),
        (lambda token: [f"access_token.{token}"], "access_token.{token}"),
    ],
)
def test_an_access_token_in_the_subprotocols_is_accepted_and_echoed(run, owner, offer, echoed):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    token = issue_tokens(owner).access_token
    connected, subprotocol, event = _first_event(path_of(run), subprotocols=offer(token))
    assert connected and subprotocol == echoed.format(token=token)
    assert event["seq"] == 1


def test_an_access_token_in_the_query_opens_the_stream(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    token = issue_tokens(owner).access_token
    connected, subprotocol, event = _first_event(path_of(run, f"token={token}"))
    assert connected and subprotocol is None and event["seq"] == 1


def test_the_dashboard_session_cookie_opens_the_stream_from_an_allowed_origin(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    browser = DjangoClient()
    browser.force_login(owner)
    headers = [
        (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode()),
        (b"origin", b"http://localhost:8000"),
    ]
    connected, _, event = _first_event(path_of(run), headers=headers)
    assert connected and event["type"] == "run_started"


def test_a_cors_origin_is_allowed(run, owner, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    record(run, ("run_started", {"run_id": str(run.pk)}))
    headers = [(b"origin", b"https://app.example.com"), *key_header(api_key_of(owner))]
    connected, _, event = _first_event(path_of(run), headers=headers)
    assert connected and event["seq"] == 1


def test_an_admin_may_follow_anyones_run(run, admin):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    connected, _, event = _first_event(path_of(run), headers=key_header(api_key_of(admin)))
    assert connected and event["execution_id"] == str(run.pk)


# --- what it sends ----------------------------------------------------------------------------


def test_replays_after_then_follows_live_until_the_terminal_event_then_closes_1000(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}), *deltas(DELTAS[:2]))
    key = api_key_of(owner)

    async def scenario():
        client = communicator(path_of(run, "after=1"), key_header(key))
        assert (await client.connect())[0]
        replayed = [await receive(client) for _ in range(2)]
        await sync_to_async(record)(run, *deltas(DELTAS[2:]))
        live = [await receive(client) for _ in range(2)]
        await sync_to_async(complete)(run, "".join(DELTAS))
        terminal = await receive(client)
        code = await closed(client)
        await client.disconnect()
        return replayed, live, terminal, code

    replayed, live, terminal, code = async_to_sync(scenario)()
    stored = [event.as_message() for event in event_log.events_after(run)]
    assert [*replayed, *live, terminal] == stored[1:]
    assert [event["seq"] for event in [*replayed, *live, terminal]] == [2, 3, 4, 5, 6]
    assert terminal["type"] == "run_completed"
    assert "".join(e["data"]["content"] for e in replayed + live) == terminal["data"]["output"]
    assert code == 1000


def write_unpublished(execution, words):
    """Events stored as `record_events` stores them, but never published: what the log holds
    when the channel layer dropped a message."""
    with transaction.atomic():
        last = Execution.objects.select_for_update().get(pk=execution.pk).last_seq
        rows = [
            ExecutionEvent(
                execution=execution, seq=last + n, type="content_delta", data={"content": word}
            )
            for n, word in enumerate(words, start=1)
        ]
        ExecutionEvent.objects.bulk_create(rows)
        Execution.objects.filter(pk=execution.pk).update(last_seq=last + len(words))
    return [row.as_message() for row in rows]


def test_live_duplicates_are_dropped_and_a_skipped_seq_is_read_from_the_log(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    key = api_key_of(owner)

    async def scenario():
        client = communicator(path_of(run), key_header(key))
        assert (await client.connect())[0]
        received = [await receive(client)]
        # Seq 1 again, as a late subscriber gets it from both the log and the layer.
        await sync_to_async(event_log.publish)(run.pk, received)
        # Seqs 2 and 3 are in the log, but only 3 reaches the layer.
        stored = await sync_to_async(write_unpublished)(run, ["a", "b"])
        await sync_to_async(event_log.publish)(run.pk, stored[1:])
        received += [await receive(client), await receive(client)]
        # The next live event follows directly: nothing was sent twice.
        await sync_to_async(record)(run, ("content_delta", {"content": "c"}))
        received.append(await receive(client))
        await client.disconnect()
        return received

    received = async_to_sync(scenario)()
    assert [event["seq"] for event in received] == [1, 2, 3, 4]
    assert [event["data"].get("content") for event in received[1:]] == ["a", "b", "c"]


def test_a_finished_run_replays_everything_and_closes_1000(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}), *deltas(DELTAS))
    complete(run, "".join(DELTAS))
    key = api_key_of(owner)

    async def scenario():
        client = communicator(path_of(run), key_header(key))
        assert (await client.connect())[0]
        events = [await receive(client) for _ in range(6)]
        return events, await closed(client)

    events, code = async_to_sync(scenario)()
    assert [event["seq"] for event in events] == [1, 2, 3, 4, 5, 6]
    assert events == [event.as_message() for event in event_log.events_after(run)]
    assert code == 1000


def test_after_the_terminal_event_nothing_is_sent_and_the_socket_closes_1000(run, owner):
    record(run, ("run_started", {"run_id": str(run.pk)}))
    complete(run, "done")
    key = api_key_of(owner)

    async def scenario():
        client = communicator(path_of(run, "after=2"), key_header(key))
        connected, _ = await client.connect()
        return connected, await closed(client)

    assert async_to_sync(scenario)() == (True, 1000)


def test_messages_are_the_whole_event_as_json(run, owner):
    record(run, ("tool_call", {"call_id": "c1", "name": "search", "args": {"q": "é"}}))
    key = api_key_of(owner)

    async def scenario():
        client = communicator(path_of(run), key_header(key))
        await client.connect()
        output = await client.receive_output(timeout=10)
        await client.disconnect()
        return output

    output = async_to_sync(scenario)()
    message = json.loads(output["text"])
    assert set(message) == {"seq", "type", "data", "timestamp", "execution_id"}
    assert message == event_log.events_after(run).get().as_message()


# --- live: daphne and RQ workers, a real WebSocket client ------------------------------------


@pytest.fixture
def client(live, owner):
    return Client(live, owner)


def start(client, agent_id, **body) -> str:
    response = client.post(f"/agents/{agent_id}/execute", json=body)
    assert response.status_code in (201, 202), response.text
    return response.json()["id"]


def stored_events(client, run_id) -> list[dict]:
    return client.get(f"/executions/{run_id}/events", params={"limit": 1000}).json()


@pytest.mark.slow
def test_a_real_run_streams_the_same_events_as_its_json_log_then_closes_1000(live, client):
    agent_id = deploy(client, "story")
    run_id = start(client, agent_id, input={"topic": "a heron", "delay": 0.02})
    key = client.headers["X-API-Key"]
    with live_socket(live, f"/ws/executions/{run_id}/", key) as socket:
        messages, code = read_until_closed(socket)
    assert code == 1000
    assert messages == stored_events(client, run_id)
    assert [message["seq"] for message in messages] == list(range(1, len(messages) + 1))
    assert messages[0]["type"] == "run_started" and messages[-1]["type"] == "run_completed"
    text = "".join(m["data"]["content"] for m in messages if m["type"] == "content_delta")
    assert text == messages[-1]["data"]["output"]
    assert "a heron" in text


@pytest.mark.slow
def test_reconnecting_with_after_loses_and_repeats_nothing(live, client):
    agent_id = deploy(client, "story")
    run_id = start(client, agent_id, input={"topic": "a fox", "delay": 0.03})
    key = client.headers["X-API-Key"]
    path = f"/ws/executions/{run_id}/"
    with live_socket(live, path, key) as socket:
        first = read_until(socket, lambda got: len(got) == 12)
    assert first[-1]["type"] == "content_delta"  # the client left in the middle of the run
    with live_socket(live, f"{path}?after={first[-1]['seq']}", key) as socket:
        rest, code = read_until_closed(socket)
    messages = first + rest
    assert code == 1000
    assert [message["seq"] for message in messages] == list(range(1, len(messages) + 1))
    assert messages == stored_events(client, run_id)


@pytest.mark.slow
def test_a_finished_run_replays_from_after_and_closes_1000(live, client):
    agent_id = deploy(client, "echo")
    run_id = start(client, agent_id, input={"hello": "world"}, wait=30)
    wait_for_status(client, run_id, {"completed"})
    stored = stored_events(client, run_id)
    key = client.headers["X-API-Key"]
    with live_socket(live, f"/ws/executions/{run_id}/?after=1", key) as socket:
        messages, code = read_until_closed(socket)
    assert messages == stored[1:] and messages[-1]["type"] == "run_completed"
    assert code == 1000


@pytest.mark.slow
def test_the_live_server_refuses_with_the_close_code(live, client, other):
    agent_id = deploy(client, "echo")
    run_id = start(client, agent_id, input={}, wait=30)
    path = f"/ws/executions/{run_id}/"
    outsider = Client(live, other).headers["X-API-Key"]
    mine = client.headers["X-API-Key"]
    refusals = {}
    for name, key, options in [
        ("bad key", "aimos_nope_nope", {}),
        ("outsider", outsider, {}),
        ("foreign origin", mine, {"origin": "https://evil.example"}),
    ]:
        with live_socket(live, path, key, **options) as socket:
            refusals[name] = read_until_closed(socket)
    assert refusals == {
        "bad key": ([], 4401),
        "outsider": ([], 4404),
        "foreign origin": ([], 4403),
    }
