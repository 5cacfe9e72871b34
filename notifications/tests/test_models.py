"""The redelivery rule on the model: only a delivery that has ended starts again."""

import pytest

from core.errors import Conflict
from notifications import services
from notifications.models import WebhookDelivery

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(owner, settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    return services.create_webhook(owner, url="http://127.0.0.1:9/", events=["*"])


def test_a_pending_delivery_cannot_be_reset(hook):
    delivery = WebhookDelivery.objects.create(
        id="msg_p", webhook=hook, event="agent.created", payload={}, status="pending"
    )
    with pytest.raises(Conflict, match="still being attempted"):
        delivery.reset()
    assert WebhookDelivery.objects.get().status == "pending"


@pytest.mark.parametrize("status", ["failed", "succeeded"])
def test_an_ended_delivery_is_reset_to_pending_with_its_log_kept(hook, status):
    log = [{"attempt": 1, "status_code": 500}]
    delivery = WebhookDelivery.objects.create(
        id="msg_e", webhook=hook, event="agent.created", payload={}, status=status, log=log
    )
    delivery.reset()
    stored = WebhookDelivery.objects.get()
    assert (delivery.status, stored.status, stored.log) == ("pending", "pending", log)
