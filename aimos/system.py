"""System status and metrics samples: what `GET system/status` and `GET system/metrics` show.

Everything here is read from PostgreSQL and Redis when asked (nothing kept in process
memory), so every web and worker process gives the same answer.

Health: three checks, each worth a third of `system_health_score`: the database answers,
Redis answers, at least one RQ worker is alive. `status` is `unhealthy` when the database or
Redis is down (requests fail), `degraded` when only the workers are missing (requests work,
builds and runs wait in the queues), else `healthy`.

The sandbox is the exception: whether this host can run the configured backend is asked of
the backend itself, as this process sees it (`aimos.sandbox_status`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.db.models import Count, Max, Q
from django.utils import timezone

from agents.choices import AgentStatus
from agents.models import Agent
from aimos.health import check_database, check_redis
from aimos.models import MetricSample, SamplingState
from aimos.sandbox_status import sandbox_status
from executions.models import Execution

logger = logging.getLogger(__name__)

QUEUES = ("builds", "runs", "default")
# CPU use and network throughput are measured over this window when a sample is taken.
SAMPLE_WINDOW_SECONDS = 0.5


def live_workers() -> list[str]:
    """Names of the RQ workers registered in Redis (a killed worker drops out when its
    registration expires, rq's `worker_ttl`)."""
    import django_rq
    from rq import Worker

    connection = django_rq.get_connection("default")
    return sorted(worker.name for worker in Worker.all(connection=connection))


def queue_depths() -> dict[str, int]:
    """Jobs waiting in each queue (not the scheduled or running ones)."""
    import django_rq

    return {name: django_rq.get_queue(name).count for name in QUEUES}


def health_checks() -> tuple[dict[str, str], list[str], dict[str, int | None]]:
    """The three checks, the live workers and the queue depths.

    Redis is queried for workers and queues only when it answered its check, so a Redis
    that is down costs one short connection attempt, not one per question.
    """
    checks = {"database": check_database(), "redis": check_redis()}
    workers: list[str] = []
    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    if checks["redis"] == "ok":
        try:
            workers = live_workers()
            depths = queue_depths()
        except Exception as exc:  # Redis went away between the check and now
            checks["redis"] = f"error: {exc.__class__.__name__}"
    checks["workers"] = "ok" if workers else "error: no live worker"
    return checks, workers, depths


def health_score(checks: dict[str, str]) -> float:
    """0..1: the share of checks that pass."""
    return round(sum(value == "ok" for value in checks.values()) / len(checks), 2)


def overall_status(checks: dict[str, str]) -> str:
    if checks["database"] != "ok" or checks["redis"] != "ok":
        return "unhealthy"
    if checks["workers"] != "ok":
        return "degraded"
    return "healthy"


def uptime_seconds() -> int:
    """Seconds since this (web) process started, as the operating system recorded it."""
    started = psutil.Process(os.getpid()).create_time()
    return max(0, int(time.time() - started))


def system_status(user) -> dict:
    """The status as `user` sees it.

    Health, queues, workers and the sandbox are the platform's and the same for everyone; the
    agent counts and the last execution are the caller's own (everyone's for an admin).
    """
    checks, workers, depths = health_checks()
    agents = Agent.objects.for_user(user).aggregate(
        total=Count("id"), active=Count("id", filter=Q(status=AgentStatus.READY))
    )
    last_execution = Execution.objects.for_user(user).aggregate(last=Max("created_at"))["last"]
    return {
        "status": overall_status(checks),
        "uptime_seconds": uptime_seconds(),
        "version": settings.AIMOS_VERSION,
        "environment": settings.AIMOS_ENVIRONMENT,
        "total_agents": agents["total"],
        "active_agents": agents["active"],
        "system_health_score": health_score(checks),
        "last_execution": last_execution,
        "checks": checks,
        "queues": depths,
        "workers": {"count": len(workers), "names": workers},
        "sandbox": sandbox_status(),
    }


# --- samples -------------------------------------------------------------------------------


def samples_since(hours: int):
    """Samples of the last `hours` hours, oldest first."""
    return MetricSample.objects.filter(timestamp__gte=timezone.now() - timedelta(hours=hours))


def _claim_sample(now: datetime) -> bool:
    """True for exactly one caller per AIMOS_METRICS_SAMPLE_SECONDS, across processes."""
    SamplingState.objects.get_or_create(pk=1)
    due = now - timedelta(seconds=settings.AIMOS_METRICS_SAMPLE_SECONDS)
    return (
        SamplingState.objects.filter(pk=1)
        .filter(Q(last_sample_at__isnull=True) | Q(last_sample_at__lte=due))
        .update(last_sample_at=now)
        == 1
    )


def _measure() -> dict:
    """CPU and network over SAMPLE_WINDOW_SECONDS, memory and the disk holding var/ now."""
    before = psutil.net_io_counters()
    started = time.monotonic()
    cpu = psutil.cpu_percent(interval=SAMPLE_WINDOW_SECONDS)
    after = psutil.net_io_counters()
    elapsed = max(time.monotonic() - started, 1e-3)
    moved = (after.bytes_sent + after.bytes_recv) - (before.bytes_sent + before.bytes_recv)
    return {
        "cpu_usage": round(cpu, 2),
        "memory_usage": round(psutil.virtual_memory().percent, 2),
        "disk_usage": round(psutil.disk_usage(str(settings.VAR_DIR)).percent, 2),
        "network_io": round(max(moved, 0) / 1000 / elapsed, 2),
    }


def take_sample() -> MetricSample | None:
    """Records a sample, unless one was taken less than AIMOS_METRICS_SAMPLE_SECONDS ago by
    any process; then deletes the samples older than AIMOS_METRICS_RETENTION_HOURS.

    Called by the upkeep process. The sample or None when it was not due.
    """
    now = timezone.now()
    if not _claim_sample(now):
        return None
    checks, _, _ = health_checks()
    sample = MetricSample.objects.create(
        timestamp=now,
        host=socket.gethostname()[:255],
        active_agents_count=Agent.objects.filter(status=AgentStatus.READY).count(),
        system_health_score=health_score(checks),
        **_measure(),
    )
    prune_samples(now)
    return sample


def prune_samples(now: datetime | None = None) -> int:
    """Deletes samples past the retention; how many went."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.AIMOS_METRICS_RETENTION_HOURS)
    deleted, _ = MetricSample.objects.filter(timestamp__lt=cutoff).delete()
    return deleted


def sample_for_maintenance() -> bool:
    """`take_sample()` for the upkeep process: a failure is logged, never raised, so the
    job still reschedules itself. Whether a sample was taken."""
    try:
        return take_sample() is not None
    except Exception:
        logger.exception("Taking a metrics sample failed")
        return False
