"""Repairing runs whose worker died, called by the upkeep process (`aimos.upkeep`): a run
whose lease expired ends `failed`/`lost` (or is queued again, once, when its agent never
started), and a pending run whose queued job vanished is queued again."""

from __future__ import annotations

import logging
from datetime import timedelta

import django_rq
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.queues import job_on_its_way, queued_job_ids
from core.sandbox_settings import sandbox_config
from executions.choices import ErrorType, ExecutionStatus
from executions.events import record_events
from executions.jobs import enqueue_run, run_job_id
from executions.models import Execution
from executions.outcomes import finish
from sandbox import get_backend

logger = logging.getLogger(__name__)

REQUEUED_MESSAGE = "The worker stopped before the agent started; queued again"


def sweep_lost_runs(now=None) -> dict:
    """Runs whose worker died (lease expired) end `failed`/`lost`, or are queued again once when
    the agent never started; pending runs whose job vanished are queued again. Every write
    names the attempt it saw and holds only while the lease is still expired (and, to queue
    again, the sandbox not started), so a worker that comes back changes nothing it no longer
    holds, and one that started its sandbox meanwhile keeps its run. `now`: the moment to
    judge by (the current time)."""
    now = now or timezone.now()
    lost = requeued = 0
    expired = Execution.objects.filter(
        status__in=[ExecutionStatus.RUNNING, ExecutionStatus.PAUSED], lease_expires_at__lt=now
    )
    for execution in expired.select_related("agent"):
        if not execution.sandbox_started and execution.attempt < 2:
            with transaction.atomic():
                if Execution.requeue(execution.pk, attempt=execution.attempt, expired_by=now):
                    record_events(
                        execution.pk,
                        [
                            (
                                "log",
                                {
                                    "level": "warning",
                                    "message": REQUEUED_MESSAGE,
                                    "source": "platform",
                                },
                            )
                        ],
                    )
                    transaction.on_commit(
                        lambda pk=execution.pk, n=execution.attempt: enqueue_run(pk, attempt=n)
                    )
                    requeued += 1
            continue
        if finish(
            execution,
            ExecutionStatus.FAILED,
            reason="The worker running this execution stopped",
            error_type=ErrorType.LOST,
            from_states=[ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
            attempt=execution.attempt,
            expired_by=now,
        ):
            lost += 1
            _kill_orphan(execution)
    return {"lost": lost, "requeued": requeued, "pending_requeued": _requeue_vanished_jobs(now)}


def _requeue_vanished_jobs(now) -> int:
    """Pending runs without a job on its way to them (`core.queues.job_on_its_way`) are queued
    again, under the next attempt number: the old job, should it turn up, claims nothing."""
    queue = django_rq.get_queue("runs")
    cutoff = now - timedelta(seconds=settings.AIMOS_RUN_LEASE_SECONDS * 2)
    pending = Execution.objects.filter(status=ExecutionStatus.PENDING, created_at__lt=cutoff)
    queued = queued_job_ids(queue)
    count = 0
    for pk, attempt in pending.values_list("pk", "attempt").iterator():
        if job_on_its_way(queue, run_job_id(pk, attempt), started_since=cutoff, queued=queued):
            continue
        with transaction.atomic():
            if Execution.requeue_pending(pk, queued=attempt):
                transaction.on_commit(lambda pk=pk, n=attempt + 1: enqueue_run(pk, attempt=n))
                count += 1
    return count


def sweep_sandboxes() -> int:
    """Kill and delete the sandboxes of this host's dead workers (the configured backend's
    `sweep()`); how many runs were swept. A backend this host cannot run sweeps nothing."""
    try:
        return len(get_backend(config=sandbox_config()).sweep())
    except Exception:  # noqa: BLE001 — the next pass tries again
        logger.exception("could not sweep the sandboxes of dead workers")
        return 0


def _kill_orphan(execution: Execution) -> None:
    """Make sure nothing of a lost run goes on in its sandbox."""
    try:
        backend = get_backend(execution.version.sandbox_backend or None, config=sandbox_config())
        backend.kill_run(str(execution.pk))
    except Exception:  # the run is recorded as lost either way
        logger.exception("could not clean the sandbox of lost execution %s", execution.pk)
