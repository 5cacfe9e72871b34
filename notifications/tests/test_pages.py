"""Dashboard pages of webhooks: the list and its form (the secret shown once), one webhook
with its deliveries, enabling and disabling it, sending a delivery again, and outsiders' 404s."""

import pytest
from django.urls import reverse

from notifications import services
from notifications.delivery import deliver
from notifications.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page(client, owner):
    client.force_login(owner)
    return client


HOOK = "http://127.0.0.1:9/hooks/aimos"  # nothing listens on the discard port: deliveries fail


@pytest.fixture
def local_hooks(settings, rq_queues):
    """Webhooks may point at this host; the delivery jobs they queue are dropped afterwards."""
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    yield
    for queue in rq_queues:
        queue.empty()


def test_a_new_webhook_shows_its_secret_once(page, owner, local_hooks):
    response = page.post(
        reverse("webhook-list"),
        {"url": HOOK, "events": ["execution.completed", "build.failed"], "description": "CI"},
    )
    webhook = Webhook.objects.get(user=owner)
    assert response["Location"] == reverse("webhook-detail", args=[webhook.pk])
    assert webhook.events == ["build.failed", "execution.completed"]

    first = page.get(response["Location"]).content.decode()
    assert webhook.secret in first
    assert "It is shown only this once." in first
    assert webhook.secret not in page.get(response["Location"]).content.decode()
    assert HOOK in page.get(reverse("webhook-list")).content.decode()


def test_a_webhook_to_a_private_address_is_refused(page, owner, settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False
    response = page.post(reverse("webhook-list"), {"url": HOOK, "events": ["*"]})
    assert response.status_code == 400
    assert "non-public address" in response.content.decode()
    # A literal public address: nothing is resolved, and the webhook is refused for its events.
    missing = page.post(reverse("webhook-list"), {"url": "https://93.184.216.34/x", "events": []})
    assert missing.status_code == 400
    assert not Webhook.objects.exists()


def test_deliveries_are_listed_and_can_be_sent_again(page, owner, local_hooks):
    webhook = services.create_webhook(owner, url=HOOK, events=["*"])
    services.dispatch(owner.pk, "execution.completed", {"execution_id": "abc"})
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    assert deliver(delivery.pk) is False  # connection refused, final attempt

    body = page.get(reverse("webhook-detail", args=[webhook.pk])).content.decode()
    assert 'class="badge badge-failed"' in body
    assert "ConnectionRefusedError" in body
    assert "&quot;execution_id&quot;: &quot;abc&quot;" in body

    url = reverse("delivery-redeliver", args=[webhook.pk, delivery.pk])
    response = page.post(url, follow=True)
    assert "execution.completed queued to be sent again." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    again = page.post(url, follow=True)
    assert "still being attempted" in again.content.decode()


def test_a_webhook_can_be_disabled_and_enabled(page, owner, local_hooks):
    webhook = services.create_webhook(owner, url=HOOK, events=["*"])
    page.post(reverse("webhook-toggle", args=[webhook.pk]))
    webhook.refresh_from_db()
    assert webhook.is_active is False
    assert (
        'class="badge badge-disabled"'
        in page.get(reverse("webhook-detail", args=[webhook.pk])).content.decode()
    )
    page.post(reverse("webhook-toggle", args=[webhook.pk]))
    webhook.refresh_from_db()
    assert webhook.is_active is True


def test_another_users_webhook_is_a_404(client, owner, other, local_hooks):
    webhook = services.create_webhook(owner, url=HOOK, events=["*"])
    services.dispatch(owner.pk, "build.failed", {})
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    client.force_login(other)
    assert client.get(reverse("webhook-detail", args=[webhook.pk])).status_code == 404
    assert client.post(reverse("webhook-toggle", args=[webhook.pk])).status_code == 404
    redeliver = reverse("delivery-redeliver", args=[webhook.pk, delivery.pk])
    assert client.post(redeliver).status_code == 404
    assert HOOK not in client.get(reverse("webhook-list")).content.decode()
    webhook.refresh_from_db()
    assert webhook.is_active is True


def test_a_pending_delivery_is_not_sent_again(page, owner, local_hooks, rq_queues):
    webhook = services.create_webhook(owner, url=HOOK, events=["*"])
    WebhookDelivery.objects.create(
        id="msg_pending", webhook=webhook, event="agent.created", payload={}, status="pending"
    )
    url = reverse("delivery-redeliver", args=[webhook.pk, "msg_pending"])
    response = page.post(url, follow=True)
    assert "still being attempted" in response.content.decode()
    pending = WebhookDelivery.objects.get()
    assert (pending.status, pending.attempts) == ("pending", 0)
    assert sum(queue.count for queue in rq_queues) == 0
