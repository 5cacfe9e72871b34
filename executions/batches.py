"""Batches as they are read: how many of their runs ended and how, and how long one should
take. Batches are started with the other runs, by `executions.services.start_batch`."""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError
from django.db.models import Avg

from core.errors import NotFound
from executions.choices import ExecutionStatus
from executions.models import Batch, Execution


def access_batch(user, batch_id) -> Batch:
    try:
        return Batch.objects.for_user(user).get(pk=batch_id)
    except (Batch.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Batch not found") from None


def batch_summary(batch: Batch) -> dict:
    statuses = list(batch.executions.values_list("status", flat=True))
    total = len(statuses)
    done = sum(status in ExecutionStatus.terminal() for status in statuses)
    succeeded = statuses.count(ExecutionStatus.COMPLETED)
    return {
        "total": total,
        "completed": succeeded,
        "failed": done - succeeded,
        "active": total - done,
        "finished": done == total,
        "success_rate": round(100.0 * succeeded / done, 1) if done else 0.0,
    }


def estimated_duration(batch: Batch) -> int:
    """Seconds the batch should take: per run, the average duration of its agent's completed
    runs (its timeout when the agent has none yet); the longest of them when the batch runs in
    parallel, their sum when one after another."""
    runs = list(batch.executions.values_list("agent_id", "timeout_seconds"))
    if not runs:
        return 0
    averages = dict(
        Execution.objects.filter(
            agent_id__in={agent_id for agent_id, _ in runs},
            status=ExecutionStatus.COMPLETED,
            duration_ms__isnull=False,
        )
        .order_by()
        .values("agent_id")
        .annotate(average=Avg("duration_ms"))
        .values_list("agent_id", "average")
    )
    seconds = [
        averages[agent_id] / 1000 if agent_id in averages else timeout for agent_id, timeout in runs
    ]
    return max(1, math.ceil(max(seconds) if batch.parallel else sum(seconds)))
