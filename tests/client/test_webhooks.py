"""`aimos_client.webhooks.verify` against the platform's own deliveries: webhooks made with
the library, events delivered by a real RQ worker to a receiver on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from aimos_client import Client
from aimos_client.webhooks import WebhookVerificationError, verify

from notifications.tests.receiver import Receiver


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def aimos(live_server, owner, settings):
    """The library against an in-process server whose webhooks may call 127.0.0.1."""
    from accounts.services import create_api_key

    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    with Client(live_server.url, api_key=create_api_key(owner, name="hooks")[1]) as client:
        yield client


@pytest.mark.django_db(transaction=True)
def test_verify_accepts_the_platforms_deliveries_and_refuses_a_changed_body(
    aimos, receiver, drain_queues
):
    hook = aimos.webhooks.create(receiver.url, ["agent.created"], description="tests")
    assert hook["secret"].startswith("whsec_")
    agent = aimos.agents.create("hooked")
    drain_queues()

    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    event = verify(body, headers, hook["secret"])
    assert event["type"] == "agent.created"
    assert event["data"]["agent_id"] == agent["id"]

    changed = body.replace(b"hooked", b"hacked")
    assert changed != body
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(changed, headers, hook["secret"])
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(body, headers, aimos.webhooks.create(receiver.url, ["build.started"])["secret"])
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify(body, headers, hook["secret"], now=int(headers["webhook-timestamp"]) + 301)
    assert verify(body.decode(), {k.upper(): v for k, v in headers.items()}, hook["secret"])

    deliveries = aimos.webhooks.deliveries(hook["id"])
    assert [d["status"] for d in deliveries] == ["succeeded"]
    assert deliveries[0]["payload"] == json.loads(body)


@pytest.mark.django_db(transaction=True)
def test_webhooks_are_listed_changed_and_deleted(aimos, receiver):
    hook = aimos.webhooks.create(receiver.url, ["execution.completed"])
    assert "secret" not in aimos.webhooks.get(hook["id"])
    changed = aimos.webhooks.update(hook["id"], is_active=False, events=["*"])
    assert changed["is_active"] is False and changed["events"] == ["*"]
    assert [h["id"] for h in aimos.webhooks.list()] == [hook["id"]]
    aimos.webhooks.delete(hook["id"])
    assert aimos.webhooks.list() == []
