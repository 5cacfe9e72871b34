"""django-rq jobs of the notifications app, and the function that enqueues them."""

import django_rq
from django.conf import settings
from rq import Retry, get_current_job

from notifications import delivery


def deliver_webhook(delivery_id: str) -> bool:
    """One delivery attempt; RQ retries it (with the configured delays) while it fails."""
    job = get_current_job()
    final = job is None or not job.retries_left
    return delivery.deliver(delivery_id, final=final)


def delivery_job_id(delivery_id: str) -> str:
    return f"deliver-{delivery_id}"


def enqueue_delivery(delivery_id: str) -> None:
    """Queue the attempts of one delivery on `default`, retried after AIMOS_WEBHOOK_RETRY_DELAYS;
    the job's id names the delivery, so the sweep can tell whether it is still on its way."""
    delays = settings.AIMOS_WEBHOOK_RETRY_DELAYS
    django_rq.get_queue("default").enqueue(
        deliver_webhook,
        str(delivery_id),
        job_id=delivery_job_id(delivery_id),
        retry=Retry(max=len(delays), interval=delays) if delays else None,
        job_timeout=int(settings.AIMOS_WEBHOOK_TIMEOUT_SECONDS) + 30,
    )
