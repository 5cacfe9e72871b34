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
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from core.live import send_soon
from notifications import services

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
    the user's webhooks. The callers (agents, executions) give plain data: ids and names."""
    payload = message(kind, data)
    group = user_group(user_id)
    transaction.on_commit(lambda: send(group, payload))
    event = event_for(kind, data)
    if event is not None:
        services.dispatch(user_id, event, data)


def event_for(kind: str, data: dict[str, Any]) -> str | None:
    """The webhook event (`services.EVENTS`) of a feed message, or None when there is none:
    read from the message's kind and its plain fields (`status`, and `agent_ids` or
    `total_agents`, which only a batch's messages carry)."""
    status = data.get("status")
    if kind == "agent_created":
        return "agent.created"
    if kind == "build_started":
        return "build.started"
    if kind == "build_completed":
        return "build.completed" if status == "ready" else "build.failed"
    if kind == "execution_started" and "agent_ids" not in data:
        return "execution.started"
    if kind == "execution_completed" and "total_agents" in data:
        return "batch.completed"
    if kind in ("execution_completed", "agent_completed") and status:
        return "execution.completed" if status == "completed" else f"execution.{status}"
    return None


def send(group: str, payload: dict[str, Any]) -> None:
    """Send one feed message to a group, in order with those before (`core.live`); a failure
    is logged, never raised."""
    send_soon(group, {"type": MESSAGE_TYPE, "message": payload})


def broadcast_metrics_if_due(measure: Callable[[], dict[str, Any]]) -> bool:
    """Send a `metrics_update` (the data `measure()` gives) to every feed, at most once per
    AIMOS_METRICS_INTERVAL across all workers (a Redis key with that lifetime decides who,
    before anything is measured). Called by the upkeep process; never raises. Whether this
    call sent one."""
    try:
        # A second less than the interval, so that an upkeep pass arriving just on time
        # (its own interval divides this one) still finds the key gone.
        lifetime = max(1, settings.AIMOS_METRICS_INTERVAL - 1)
        if not cache.add(_METRICS_DUE_KEY, True, timeout=lifetime):
            return False
        send(METRICS_GROUP, message("metrics_update", measure()))
        return True
    except Exception:
        logger.exception("could not broadcast the metrics")
        return False
