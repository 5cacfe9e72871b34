"""Use cases of webhooks: register, change, forget; dispatch an event to the webhooks that
want it; send a delivery again. Called by the API, the dashboard pages, the admin and the
user feed alike."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core.errors import NotFound, ServiceError
from notifications.guard import UnsafeURL, check_url
from notifications.jobs import enqueue_delivery
from notifications.models import Webhook, WebhookDelivery
from notifications.signing import new_secret

logger = logging.getLogger(__name__)

EVENTS = (
    "agent.created",
    "build.started",
    "build.completed",
    "build.failed",
    "execution.started",
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "execution.timed_out",
    "batch.completed",
)


def _errors(field: str, message: str) -> ServiceError:
    return ServiceError(
        "Invalid webhook", code="validation_error", errors=[{"field": field, "message": message}]
    )


def check_events(events: Any) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise _errors("events", 'A non-empty list of event names, or ["*"].')
    unknown = sorted(set(events) - set(EVENTS) - {"*"})
    if unknown:
        raise _errors(
            "events", f"Unknown events: {', '.join(unknown)}. Known: {', '.join(EVENTS)}."
        )
    return sorted(set(events))


def check_target(url: str) -> None:
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise _errors("url", str(exc)) from None


def access_webhook(user, webhook_id) -> Webhook:
    try:
        return Webhook.objects.for_user(user).get(pk=webhook_id)
    except (Webhook.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Webhook not found") from None


def access_delivery(webhook: Webhook, delivery_id) -> WebhookDelivery:
    delivery = webhook.deliveries.filter(pk=str(delivery_id)).first()
    if delivery is None:
        raise NotFound("Delivery not found")
    return delivery


def create_webhook(
    user, *, url: str, events: Any, description: str = "", is_active: bool = True
) -> Webhook:
    """A new webhook; returns it with its secret (shown once)."""
    check_target(url)
    return Webhook.objects.create(
        user=user,
        url=url,
        events=check_events(events),
        description=description,
        is_active=is_active,
        secret=new_secret(),
    )


def update_webhook(webhook: Webhook, **changes: Any) -> Webhook:
    if "url" in changes:
        check_target(changes["url"])
    if "events" in changes:
        changes["events"] = check_events(changes["events"])
    for field, value in changes.items():
        setattr(webhook, field, value)
    webhook.save()
    return webhook


def delete_webhook(webhook: Webhook) -> None:
    """Forget the webhook and its deliveries; queued attempts find nothing and stop."""
    webhook.delete()


def dispatch(user_id, event: str, data: dict) -> None:
    """Send `event` to every webhook of the user that wants it: one delivery row each, written
    with the happening itself (in the caller's transaction), its job queued once that commits.
    A job that never got queued, or was lost with its worker, is queued again by the upkeep
    sweep (`notifications.recovery.sweep_deliveries`), so a delivery is never lost."""
    hooks = [
        hook
        for hook in Webhook.objects.filter(user_id=user_id, is_active=True)
        if hook.wants(event)
    ]
    for hook in hooks:
        message_id = f"msg_{uuid.uuid4().hex}"
        payload = {
            "type": event,
            "event": event,
            "timestamp": timezone.now().isoformat(),
            "data": data,
        }
        WebhookDelivery.objects.create(id=message_id, webhook=hook, event=event, payload=payload)
        transaction.on_commit(lambda message_id=message_id: _enqueue_soon(message_id))


def _enqueue_soon(delivery_id: str) -> None:
    try:
        enqueue_delivery(delivery_id)
    except Exception:  # the happening is recorded either way; the sweep queues it later
        logger.exception("could not queue webhook delivery %s", delivery_id)


def redeliver(delivery: WebhookDelivery) -> WebhookDelivery:
    """Send an event again: a new series of attempts, same id and payload, signed anew.

    The one place that decides it, for the API, the dashboard and the admin: a delivery
    still pending is refused with Conflict (`WebhookDelivery.reset`)."""
    delivery.reset()
    transaction.on_commit(lambda: enqueue_delivery(delivery.pk))
    return delivery
