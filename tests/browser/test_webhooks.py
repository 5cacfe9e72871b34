"""Webhooks in a real browser: the form refuses private addresses, a new webhook's secret is
shown once, and a failed delivery can be sent again."""

import time

import pytest
from playwright.sync_api import expect

from notifications import services
from notifications.models import Webhook, WebhookDelivery

pytestmark = pytest.mark.slow

# A public address written as an IP, so that no name has to resolve; it only subscribes to
# batches, which these tests never run, so nothing is ever sent to it.
PUBLIC_HOOK = "http://93.184.216.34/hooks/aimos"


def test_webhook_form_refuses_private_addresses_and_shows_the_secret_once(
    open_browser, owner, shot
):
    page = open_browser(owner)
    page.click("nav >> text=Webhooks")
    expect(page.locator("text=No webhooks yet.")).to_be_visible()
    page.fill("#id_url", "http://127.0.0.1:8000/hooks")
    page.click("text=Add webhook")
    expect(page.locator(".field.has-error .error")).to_contain_text("non-public address")
    shot(page, "webhooks-form-error")

    page.fill("#id_url", PUBLIC_HOOK)
    page.uncheck("input[value='*']")
    page.check("input[value='batch.completed']")
    page.fill("#id_description", "Nightly batch report")
    page.click("text=Add webhook")
    expect(page.locator("#new-secret")).to_be_visible()
    webhook = Webhook.objects.get(user=owner)
    assert page.locator("#secret-value").input_value() == webhook.secret
    assert webhook.events == ["batch.completed"]
    shot(page, "webhook-created")

    page.reload()
    expect(page.locator("#new-secret")).to_have_count(0)
    assert webhook.secret not in page.content()
    page.click("#toggle-button")
    expect(page.locator("#webhook-status")).to_have_text("disabled")
    webhook.refresh_from_db()
    assert webhook.is_active is False


def test_a_failed_delivery_is_shown_and_sent_again(open_browser, live, owner, settings, shot):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True  # in this process only: the server refuses it
    webhook = services.create_webhook(owner, url="http://127.0.0.1:9/hooks", events=["*"])
    services.dispatch(owner.pk, "execution.completed", {"execution_id": "e-1"})
    delivery = WebhookDelivery.objects.get(webhook=webhook)
    wait_for(lambda: WebhookDelivery.objects.get(pk=delivery.pk).status == "failed")

    page = open_browser(owner)
    page.goto(f"/webhooks/{webhook.pk}/")
    row = page.locator(f'tr[data-delivery="{delivery.pk}"]')
    expect(row.locator(".badge")).to_have_text("failed")
    row.locator("summary").click()
    expect(row.locator(".attempts")).to_contain_text("non-public address")
    shot(page, "webhook-deliveries")

    row.locator("text=Send again").click()
    expect(page.locator(".message-success")).to_contain_text("queued to be sent again")
    wait_for(lambda: WebhookDelivery.objects.get(pk=delivery.pk).attempts == 2)
    delivery.refresh_from_db()
    assert delivery.status == "failed"


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the worker did not get to it"
        time.sleep(0.2)
