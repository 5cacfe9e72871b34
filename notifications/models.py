"""Webhooks and their deliveries.

The tables keep the names they had when these models lived in `executions`
(`executions_webhook`, `executions_webhookdelivery`): the models moved, the data did not.
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.errors import Conflict
from core.owned import OwnedQuerySet


class Webhook(models.Model):
    """A URL told about the owner's events (`events` names them, `*` for all)."""

    OWNER_FIELD = "user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhooks"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=100)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        db_table = "executions_webhook"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event: str) -> bool:
        return self.is_active and ("*" in self.events or event in self.events)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event sent to one webhook, with the log of every attempt.

    `pending → succeeded | failed`; `reset()` starts a new series of attempts of a delivery
    that has ended, never of one still pending.
    """

    OWNER_FIELD = "webhook__user"

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=64)
    payload = models.JSONField()
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    log = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        db_table = "executions_webhookdelivery"
        ordering = ["-created_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.id} {self.event} ({self.status})"

    def record_attempt(
        self, *, status_code: int | None, duration_ms: int, error: str, final: bool
    ) -> None:
        """Log one attempt; the delivery succeeds on a 2xx, fails when `final` and not 2xx."""
        succeeded = status_code is not None and 200 <= status_code < 300
        self.attempts += 1
        self.response_status = status_code
        self.duration_ms = duration_ms
        self.error = error
        self.log = [
            *self.log,
            {
                "attempt": self.attempts,
                "at": timezone.now().isoformat(),
                "status_code": status_code,
                "duration_ms": duration_ms,
                "error": error,
            },
        ]
        if succeeded:
            self.status = DeliveryStatus.SUCCEEDED
            self.delivered_at = timezone.now()
        elif final:
            self.status = DeliveryStatus.FAILED
        self.save()

    def reset(self) -> None:
        """Back to pending for a redelivery (its log is kept). Only a delivery that has ended
        may start again: a pending one is still being attempted, and a second series of
        attempts would race the first (Conflict). A conditional update, so of two concurrent
        redeliveries exactly one wins."""
        ended = [DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED]
        moved = WebhookDelivery.objects.filter(pk=self.pk, status__in=ended).update(
            status=DeliveryStatus.PENDING
        )
        if moved != 1:
            raise Conflict(
                "This delivery is still being attempted; it can be sent again once it has "
                "succeeded or failed.",
                code="delivery_pending",
            )
        self.status = DeliveryStatus.PENDING
