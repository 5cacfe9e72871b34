"""The user feed: what a dashboard shows live of one user (`/ws/events/`, DESIGN §5).

Each message is `{type, data, timestamp}`. Services call `notify()` where something happened;
the message leaves once the transaction that made it true commits (at once outside one),
so a client never hears of a row it cannot read yet. Sending is best effort: the database is
the record, the feed only says "look again".

- `agent_created`: `agent_id, agent_name, status`
- `build_started`, `build_completed`: `agent_id, agent_name, version, status`
- `execution_started`: `execution_id, agent_count, parallel`, when the run (or batch) is
  recorded and queued (a single run adds `agent_id, agent_name`; a batch's `execution_id`
  is the batch's id and it adds `agent_ids`)
- `agent_completed`: one run of a batch ended: `execution_id` (the batch), `run_id,
  agent_id, agent_name, status, duration_ms`
- `execution_completed`: a run ended: `execution_id, agent_id, agent_name, status,
  duration_ms`; or the last run of a batch ended: `execution_id` (the batch),
  `total_agents, successful, failed, success_rate` (percent of runs that completed)
- `metrics_update`: `cpu_usage, memory_usage` (percent), `system_health_score` (0..1),
  `timestamp`; every AIMOS_METRICS_INTERVAL seconds

`status` is the execution's (`completed`, `failed`, `cancelled`, `timed_out`) or the
version's (`building`, `ready`, `failed`).

Channel-layer groups: `user.<id>` (the user's lifecycle messages) and `feed.metrics` (the
host's metrics, the same for everyone). Run events are not in the feed: they go to
`execution.<id>` only, which `/ws/executions/<id>/` and SSE follow.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

METRICS_GROUP = "feed.metrics"
# The consumer's handler for it is `feed_message`.
MESSAGE_TYPE = "feed.message"
_METRICS_DUE_KEY = "feed:metrics-sent"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data, "timestamp": timezone.now().isoformat()}


def notify(user_id, kind: str, data: dict[str, Any]) -> None:
    """Send `{type: kind, data, timestamp}` to the feed of `user_id` once the current
    transaction commits (the timestamp is now, when it happened), and the matching event to
    the user's webhooks."""
    payload = message(kind, data)
    group = user_group(user_id)
    transaction.on_commit(lambda: send(group, payload))
    _to_webhooks(user_id, kind, data)


def _to_webhooks(user_id, kind: str, data: dict[str, Any]) -> None:
    """The same happening, told to the user's webhooks that want it."""
    from executions import webhooks

    event = webhooks.event_for(kind, data)
    if event is not None:
        webhooks.dispatch(user_id, event, data)


def send(group: str, payload: dict[str, Any]) -> None:
    """Deliver one feed message to a group now; a failure is logged, never raised."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": MESSAGE_TYPE, "message": payload})
    except Exception:  # live delivery is best effort: the database is the record
        logger.exception("could not send %s to %s", payload.get("type"), group)


def current_metrics() -> dict[str, Any]:
    """The host as a `metrics_update` shows it: CPU over a short window, memory now, and the
    health score of `aimos.system` (the share of its checks that pass)."""
    import psutil

    from aimos import system

    checks, _, _ = system.health_checks()
    return {
        "cpu_usage": round(psutil.cpu_percent(interval=system.SAMPLE_WINDOW_SECONDS), 2),
        "memory_usage": round(psutil.virtual_memory().percent, 2),
        "system_health_score": system.health_score(checks),
        "timestamp": timezone.now().isoformat(),
    }


def broadcast_metrics_if_due() -> bool:
    """Send a `metrics_update` to every feed, at most once per AIMOS_METRICS_INTERVAL across
    all workers (a Redis key with that lifetime decides who). Called by the upkeep process;
    never raises. Whether this call sent one."""
    from django.core.cache import cache

    try:
        # A second less than the interval, so that an upkeep pass arriving just on time
        # (its own interval divides this one) still finds the key gone.
        lifetime = max(1, settings.AIMOS_METRICS_INTERVAL - 1)
        if not cache.add(_METRICS_DUE_KEY, True, timeout=lifetime):
            return False
        send(METRICS_GROUP, message("metrics_update", current_metrics()))
        return True
    except Exception:
        logger.exception("could not broadcast the metrics")
        return False
