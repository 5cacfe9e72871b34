"""Webhooks through the API: register (secret once), list, update, delete, deliveries, redeliver."""

import pytest

from notifications import services
from notifications.models import Webhook, WebhookDelivery

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
    hook = services.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
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
    hook = services.create_webhook(owner, url="http://127.0.0.1:9/nothing-listens", events=["*"])
    services.dispatch(owner.pk, "agent.created", {"agent_id": "a"})
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
    hook = services.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
    base = f"{HOOKS}/{hook.pk}"
    assert other_api.get(base).status_code == 404
    assert other_api.patch(base, {"is_active": False}, format="json").status_code == 404
    assert other_api.delete(base).status_code == 404
    assert other_api.get(f"{base}/deliveries").status_code == 404
    assert other_api.post(f"{base}/deliveries/msg_x/redeliver").status_code == 404
    assert other_api.get(HOOKS).json() == []
    assert Webhook.objects.get().is_active


@pytest.fixture
def queues(rq_queues):
    """The real RQ queues, emptied again afterwards: nothing queued here is ever delivered."""
    yield rq_queues
    for queue in rq_queues:
        queue.empty()


def test_a_pending_delivery_is_not_redelivered(owner_api, owner, allow_private, queues):
    hook = services.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
    WebhookDelivery.objects.create(
        id="msg_pending", webhook=hook, event="agent.created", payload={}, status="pending"
    )
    response = owner_api.post(f"{HOOKS}/{hook.pk}/deliveries/msg_pending/redeliver")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "delivery_pending"
    assert "still being attempted" in body["detail"]
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert queues[2].count == 0


@pytest.mark.django_db(transaction=True)
def test_a_failed_delivery_is_redelivered_once_even_when_asked_twice(
    owner_api, owner, allow_private, queues
):
    hook = services.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])
    WebhookDelivery.objects.create(
        id="msg_failed", webhook=hook, event="agent.created", payload={}, status="failed"
    )
    url = f"{HOOKS}/{hook.pk}/deliveries/msg_failed/redeliver"
    first = owner_api.post(url)
    second = owner_api.post(url)
    assert first.status_code == 202
    assert first.json()["status"] == "pending"
    assert second.status_code == 409
    assert WebhookDelivery.objects.get().status == "pending"
    assert queues[2].count == 1
