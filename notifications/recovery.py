"""Repairing webhook deliveries whose job was lost, called by the upkeep process: a pending
delivery without a job on its way (never queued because Redis was down when its event
committed, lost with Redis, or taken by a worker that died) is queued again."""

from __future__ import annotations

import logging
from datetime import timedelta

import django_rq
from django.conf import settings
from django.utils import timezone

from core.queues import job_on_its_way, queued_job_ids
from notifications.jobs import delivery_job_id, enqueue_delivery
from notifications.models import DeliveryStatus, WebhookDelivery

logger = logging.getLogger(__name__)

# A delivery row is written before its job is queued (when its transaction commits).
QUEUEING_SECONDS = 10


def sweep_deliveries(now=None) -> int:
    """Queue again the pending deliveries whose job is not on its way; how many. `now`: the
    moment to judge by (the current time)."""
    queue = django_rq.get_queue("default")
    now = now or timezone.now()
    written_before = now - timedelta(
        seconds=max(QUEUEING_SECONDS, 2 * settings.AIMOS_MAINTENANCE_INTERVAL)
    )
    # An attempt lasts at most the webhook timeout: a job taken earlier died with its worker.
    started_since = now - timedelta(seconds=settings.AIMOS_WEBHOOK_TIMEOUT_SECONDS + 60)
    pending = WebhookDelivery.objects.filter(
        status=DeliveryStatus.PENDING, created_at__lt=written_before
    ).values_list("pk", flat=True)
    queued = queued_job_ids(queue)
    count = 0
    for delivery_id in pending.iterator():
        job_id = delivery_job_id(delivery_id)
        if not job_on_its_way(queue, job_id, started_since=started_since, queued=queued):
            enqueue_delivery(delivery_id)
            count += 1
    return count
