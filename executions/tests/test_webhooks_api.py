"""Webhooks through the API: register (secret once), list, update, delete, deliveries, redeliver."""

import pytest

from executions import webhooks
from executions.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db

HOOKS = "/api/v1/webhooks"


@pytest.fixture
def allow_private(settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    settings.AIMOS_WEBHOOK_RETRY_DELAYS = []


def test_register_shows_the_secret_once(owner_api, allow_private):
    response = owner_api.post(
        HOOKS, {"url": "http://127.0.0.1:9/in", "events": ["execution.completed"]}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["secret"].startswith("whsec_")
    assert body["is_active"] is True
    listed = owner_api.get(HOOKS).json()
    assert [hook["id"] for hook in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert "secret" not in owner_api.get(f"{HOOKS}/{body['id']}").json()


def test_private_urls_are_refused_at_registration(owner_api, settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False
    for url in (
        "http://127.0.0.1/x",
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://10.1.2.3/",
    ):
        response = owner_api.post(HOOKS, {"url": url, "events": ["*"]}, format="json")
        assert response.status_code == 400, url
        assert response.json()["errors"][0]["field"] == "url"
    assert not Webhook.objects.exists()


def test_unknown_events_are_refused(owner_api, allow_private):
    response = owner_api.post(
        HOOKS, {"url": "http://127.0.0.1:9/", "events": ["execution.exploded"]}, format="json"
    )
    assert response.status_code == 400
    assert "execution.exploded" in response.json()["errors"][0]["message"]


def test_update_and_delete(owner_api, owner, allow_private):
    hook = webhooks.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
    response = owner_api.patch(
        f"{HOOKS}/{hook.pk}", {"is_active": False, "events": ["agent.created"]}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["events"] == ["agent.created"]
    hook.refresh_from_db()
    assert hook.is_active is False
    assert owner_api.delete(f"{HOOKS}/{hook.pk}").status_code == 204
    assert not Webhook.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_deliveries_are_listed_and_can_be_redelivered(
    owner_api, owner, allow_private, drain_queues
):
    hook = webhooks.create_webhook(owner, url="http://127.0.0.1:9/nothing-listens", events=["*"])
    webhooks.dispatch(owner.pk, "agent.created", {"agent_id": "a"})
    drain_queues()
    deliveries = owner_api.get(f"{HOOKS}/{hook.pk}/deliveries").json()
    assert len(deliveries) == 1
    assert deliveries[0]["status"] == "failed"
    assert deliveries[0]["log"][0]["error"]
    response = owner_api.post(f"{HOOKS}/{hook.pk}/deliveries/{deliveries[0]['id']}/redeliver")
    assert response.status_code == 202
    assert WebhookDelivery.objects.get().status == "pending"
    drain_queues()
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 2
    assert len(delivery.log) == 2


def test_outsider_gets_404_on_every_webhook_endpoint(other_api, owner, allow_private):
    hook = webhooks.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
    base = f"{HOOKS}/{hook.pk}"
    assert other_api.get(base).status_code == 404
    assert other_api.patch(base, {"is_active": False}, format="json").status_code == 404
    assert other_api.delete(base).status_code == 404
    assert other_api.get(f"{base}/deliveries").status_code == 404
    assert other_api.post(f"{base}/deliveries/msg_x/redeliver").status_code == 404
    assert other_api.get(HOOKS).json() == []
    assert Webhook.objects.get().is_active


def test_feed_messages_map_to_webhook_events():
    assert webhooks.event_for("build_completed", {"status": "failed"}) == "build.failed"
    assert (
        webhooks.event_for("execution_completed", {"status": "timed_out"}) == "execution.timed_out"
    )
    assert webhooks.event_for("execution_completed", {"total_agents": 2}) == "batch.completed"
    assert webhooks.event_for("metrics_update", {}) is None
