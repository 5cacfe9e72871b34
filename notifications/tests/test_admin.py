"""The admin of webhooks: the secret is never shown; redelivery goes through the service, so a
delivery still pending is refused there as everywhere."""

import pytest

from notifications import services
from notifications.models import WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


@pytest.fixture
def hook(owner, settings, rq_queues):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    yield services.create_webhook(owner, url="http://127.0.0.1:9/in", events=["*"])
    for queue in rq_queues:
        queue.empty()


def delivery_in(hook, status: str) -> WebhookDelivery:
    return WebhookDelivery.objects.create(
        id=f"msg_{status}", webhook=hook, event="agent.created", payload={}, status=status
    )


def redeliver(admin_client, *deliveries):
    return admin_client.post(
        "/admin/notifications/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [d.pk for d in deliveries]},
        follow=True,
    )


def test_webhook_admin_hides_the_secret_and_redelivers(admin_client, hook, rq_queues):
    delivery = delivery_in(hook, "failed")
    page = admin_client.get(f"/admin/notifications/webhook/{hook.pk}/change/")
    assert page.status_code == 200
    assert hook.secret not in page.content.decode()
    response = redeliver(admin_client, delivery)
    assert response.status_code == 200
    assert "Queued 1 redelivery(ies)." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert rq_queues[2].count == 1


def test_the_admin_does_not_redeliver_a_pending_delivery(admin_client, hook, rq_queues):
    pending = delivery_in(hook, "pending")
    failed = delivery_in(hook, "failed")
    response = redeliver(admin_client, pending, failed)
    text = response.content.decode()
    assert "Not redelivered: msg_pending: This delivery is still being attempted" in text
    assert "Queued 1 redelivery(ies)." in text
    pending.refresh_from_db()
    assert (pending.status, pending.attempts) == ("pending", 0)
    assert rq_queues[2].count == 1


def test_the_old_admin_addresses_lead_to_the_new_ones(admin_client, hook):
    response = admin_client.get(f"/admin/executions/webhook/{hook.pk}/change/?x=1")
    assert response.status_code == 301
    assert response["Location"] == f"/admin/notifications/webhook/{hook.pk}/change/?x=1"
    listing = admin_client.get("/admin/executions/webhookdelivery/")
    assert listing["Location"] == "/admin/notifications/webhookdelivery/"
