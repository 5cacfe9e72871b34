"""The user feed's own part: a message reaches the user's group once the transaction commits,
and the happening it tells is mapped to the webhook event the user's webhooks receive. (What
agents and executions tell the feed, over real sockets: `executions/tests/test_feed.py`.)"""

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from notifications import feed, services
from notifications.models import WebhookDelivery


def test_feed_messages_map_to_webhook_events():
    assert feed.event_for("agent_created", {"status": "draft"}) == "agent.created"
    assert feed.event_for("build_started", {"status": "building"}) == "build.started"
    assert feed.event_for("build_completed", {"status": "ready"}) == "build.completed"
    assert feed.event_for("build_completed", {"status": "failed"}) == "build.failed"
    assert feed.event_for("execution_started", {"agent_count": 1}) == "execution.started"
    assert feed.event_for("execution_started", {"agent_ids": ["a"]}) is None
    assert feed.event_for("execution_completed", {"status": "timed_out"}) == "execution.timed_out"
    assert feed.event_for("agent_completed", {"status": "completed"}) == "execution.completed"
    assert feed.event_for("execution_completed", {"total_agents": 2}) == "batch.completed"
    assert feed.event_for("metrics_update", {}) is None


@pytest.fixture
def queues(rq_queues):
    yield rq_queues
    for queue in rq_queues:
        queue.empty()


@pytest.mark.django_db(transaction=True)
def test_notify_tells_the_users_group_and_the_webhooks_that_want_the_event(owner, settings, queues):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    wanted = services.create_webhook(owner, url="http://127.0.0.1:9/a", events=["build.failed"])
    services.create_webhook(owner, url="http://127.0.0.1:9/b", events=["build.completed"])
    data = {"agent_id": "a1", "agent_name": "echo", "version": "v1", "status": "failed"}

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(feed.user_group(owner.pk), channel)
        try:
            await sync_to_async(feed.notify)(owner.pk, "build_completed", data)
            return await layer.receive(channel)
        finally:
            await layer.group_discard(feed.user_group(owner.pk), channel)

    received = async_to_sync(scenario)()
    assert received["type"] == feed.MESSAGE_TYPE
    assert received["message"]["type"] == "build_completed"
    assert received["message"]["data"] == data
    delivery = WebhookDelivery.objects.get()
    assert (delivery.webhook_id, delivery.event) == (wanted.pk, "build.failed")
    assert delivery.payload["data"] == data
    assert queues[2].count == 1
