"""Dispatch and delivery with retries to a real local receiver (127.0.0.1 only)."""

import pytest

from notifications import services, signing
from notifications.models import WebhookDelivery
from notifications.tests.receiver import Receiver


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hook_settings(settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    settings.AIMOS_WEBHOOK_RETRY_DELAYS = [0, 0, 0]
    return settings


@pytest.mark.django_db(transaction=True)
def test_an_event_is_delivered_signed_to_a_local_receiver(
    owner, receiver, hook_settings, drain_queues
):
    hook = services.create_webhook(owner, url=receiver.url, events=["execution.completed"])
    services.dispatch(
        owner.pk, "execution.completed", {"execution_id": "e1", "status": "completed"}
    )
    services.dispatch(owner.pk, "agent.created", {"agent_id": "a1"})  # not wanted by the hook
    drain_queues()
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    payload = signing.verify(hook.secret, headers, body)
    assert payload["type"] == "execution.completed"
    assert payload["data"] == {"execution_id": "e1", "status": "completed"}
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "succeeded"
    assert headers["webhook-id"] == delivery.id
    assert delivery.log[0]["status_code"] == 200


@pytest.mark.django_db(transaction=True)
def test_a_failed_delivery_is_retried_and_signed_anew(owner, hook_settings, drain_queues):
    receiver = Receiver(statuses=[500, 503])
    try:
        hook = services.create_webhook(owner, url=receiver.url, events=["*"])
        services.dispatch(owner.pk, "build.completed", {"version": "v1"})
        drain_queues()
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "succeeded"
    assert [entry["status_code"] for entry in delivery.log] == [500, 503, 200]
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert signing.verify(hook.secret, headers, body)["type"] == "build.completed"
        assert headers["webhook-id"] == delivery.id


@pytest.mark.django_db(transaction=True)
def test_a_delivery_failing_every_time_ends_failed_with_its_log(owner, hook_settings, drain_queues):
    receiver = Receiver(statuses=[500] * 10)
    try:
        services.create_webhook(owner, url=receiver.url, events=["*"])
        services.dispatch(owner.pk, "agent.created", {})
        drain_queues()
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.attempts == 4  # the first try and three retries
    assert delivery.error == "HTTP 500"


@pytest.mark.django_db(transaction=True)
def test_delivery_to_a_private_address_is_refused_when_not_allowed(
    owner, settings, receiver, drain_queues
):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    services.create_webhook(owner, url=receiver.url, events=["*"])
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False  # e.g. the name now resolves elsewhere
    services.dispatch(owner.pk, "agent.created", {})
    drain_queues()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.error.startswith("refused")
    assert receiver.requests == []


@pytest.mark.django_db
def test_registering_a_private_url_is_refused(owner, settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False
    from core.errors import ServiceError

    with pytest.raises(ServiceError) as error:
        services.create_webhook(owner, url="http://127.0.0.1:9/x", events=["*"])
    assert error.value.errors[0]["field"] == "url"


@pytest.mark.django_db(transaction=True)
def test_a_delivery_is_written_with_its_event_and_queued_only_if_that_commits(
    owner, receiver, hook_settings, rq_queues
):
    from django.db import transaction

    services.create_webhook(owner, url=receiver.url, events=["*"])
    with pytest.raises(RuntimeError), transaction.atomic():
        services.dispatch(owner.pk, "agent.created", {"agent_id": "a1"})
        assert WebhookDelivery.objects.count() == 1  # in the happening's own transaction
        raise RuntimeError("the happening is rolled back")

    assert WebhookDelivery.objects.count() == 0
    assert rq_queues[2].count == 0


@pytest.mark.django_db(transaction=True)
def test_a_delivery_whose_job_was_lost_is_queued_again_by_the_sweep(
    owner, receiver, hook_settings, drain_queues, rq_queues
):
    from datetime import timedelta

    from django.utils import timezone
    from rq.job import Job

    from notifications.jobs import delivery_job_id
    from notifications.recovery import sweep_deliveries

    services.create_webhook(owner, url=receiver.url, events=["*"])
    services.dispatch(owner.pk, "agent.created", {"agent_id": "a1"})
    delivery = WebhookDelivery.objects.get()
    # Judged five minutes later (the row is not backdated: a live stack's upkeep on the same
    # database, judging by the real time, leaves it alone), with its job lost.
    later = timezone.now() + timedelta(minutes=5)
    assert sweep_deliveries(now=later) == 0  # still on its way: left alone
    queue = rq_queues[2]
    Job.fetch(delivery_job_id(delivery.pk), connection=queue.connection).delete()

    assert sweep_deliveries(now=later) == 1
    assert sweep_deliveries(now=later) == 0  # queued once
    drain_queues()

    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert len(receiver.requests) == 1
