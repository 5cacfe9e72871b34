"""Prometheus metrics, computed from Redis and the database at each scrape.

Why not prometheus_client's default registry or its multiprocess mode: AIMOS runs several
web and worker processes, possibly on several hosts (DESIGN §1). In-process metrics would
give each scrape the figures of whichever process answered, and multiprocess mode only
joins processes that share a directory on one host. So:

- HTTP figures (requests by method, route template and status; latency histogram) are
  counted by `RequestLogMiddleware` into one Redis hash with a single pipelined round trip
  per request; every web process adds to the same counters.
- Everything else (executions by status and agent, run durations, versions by build
  outcome, agents, queues, workers, health) is read from PostgreSQL and Redis when scraped.

The run duration histogram is cumulative over every finished execution that recorded a
duration: deleting executions (with their agent) lowers it, which Prometheus treats as a
counter reset.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import redis
from django.conf import settings
from django.db.models import Count, Q, Sum
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

logger = logging.getLogger(__name__)

HTTP_KEY = "aimos:metrics:http"
# Seconds; prometheus_client's default buckets.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    """A client of settings.REDIS_URL with short timeouts: a request never waits on metrics."""
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        _clients[url] = client
    return client


def _field(kind: str, *labels) -> str:
    return kind + json.dumps(labels, separators=(",", ":"))


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Counts one HTTP request in Redis. Never raises: losing a count beats failing a request."""
    method = method if method in METHODS else "other"
    bucket = next((i for i, le in enumerate(REQUEST_BUCKETS) if seconds <= le), None)
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.hincrby(HTTP_KEY, _field("r", method, route, str(status)), 1)
        pipe.hincrby(HTTP_KEY, _field("b", method, route, bucket), 1)
        pipe.hincrbyfloat(HTTP_KEY, _field("s", method, route), seconds)
        pipe.execute()
    except redis.RedisError as exc:
        logger.debug("HTTP metrics not recorded: %s", exc)


def _http_families():
    requests = CounterMetricFamily(
        "aimos_requests",
        "HTTP requests by method, route template and status",
        labels=["method", "endpoint", "status"],
    )
    latency = HistogramMetricFamily(
        "aimos_request_duration_seconds",
        "HTTP request latency by method and route template",
        labels=["method", "endpoint"],
    )
    buckets: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(REQUEST_BUCKETS) + 1))
    sums: dict[tuple, float] = {}
    for raw_field, raw_value in _redis().hgetall(HTTP_KEY).items():
        field = raw_field.decode()
        kind, labels = field[0], json.loads(field[1:])
        if kind == "r":
            requests.add_metric(labels, int(raw_value))
        elif kind == "b":
            index = len(REQUEST_BUCKETS) if labels[2] is None else labels[2]
            buckets[tuple(labels[:2])][index] += int(raw_value)
        elif kind == "s":
            sums[tuple(labels)] = float(raw_value)
    for labels, counts in sorted(buckets.items()):
        latency.add_metric(
            list(labels), _cumulative(REQUEST_BUCKETS, counts), sums.get(labels, 0.0)
        )
    return [requests, latency]


def _cumulative(bounds, counts) -> list[tuple[str, int]]:
    """Prometheus buckets from per-bucket counts (the last one is +Inf)."""
    total, result = 0, []
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        total += count
        result.append((floatToGoString(bound), total))
    return result


def _gauge(name: str, documentation: str, value=None, labels=(), rows=()):
    family = GaugeMetricFamily(name, documentation, value=value, labels=labels or None)
    for label_values, row_value in rows:
        family.add_metric(list(label_values), row_value)
    return family


def _execution_families():
    from executions.choices import ExecutionStatus
    from executions.models import Execution

    by_agent = (
        Execution.objects.order_by()
        .values_list("agent_id", "status")
        .annotate(count=Count("id"))
        .order_by("agent_id", "status")
    )
    executions = _gauge(
        "aimos_executions",
        "Executions by status and agent (agent ids: names stay out of the metrics)",
        labels=["status", "agent_id"],
        rows=(((status, str(agent_id)), count) for agent_id, status, count in by_agent),
    )
    active = Execution.objects.filter(status__in=ExecutionStatus.active()).count()
    durations = HistogramMetricFamily(
        "aimos_execution_duration_seconds",
        "Duration of finished executions, by final status",
        labels=["status"],
    )
    bounds_ms = [int(bound * 1000) for bound in RUN_BUCKETS]
    rows = (
        Execution.objects.order_by()
        .filter(status__in=ExecutionStatus.terminal(), duration_ms__isnull=False)
        .values("status")
        .annotate(
            count=Count("id"),
            total_ms=Sum("duration_ms"),
            **{
                f"le{i}": Count("id", filter=Q(duration_ms__lte=ms))
                for i, ms in enumerate(bounds_ms)
            },
        )
        .order_by("status")
    )
    for row in rows:
        buckets = [(floatToGoString(b), row[f"le{i}"]) for i, b in enumerate(RUN_BUCKETS)]
        buckets.append(("+Inf", row["count"]))
        durations.add_metric([row["status"]], buckets, (row["total_ms"] or 0) / 1000)
    return [
        executions,
        _gauge("aimos_active_runs", "Executions pending, running or paused", value=active),
        durations,
    ]


def _agent_families():
    from agents.choices import AgentStatus
    from agents.models import Agent, AgentVersion

    agents = dict(
        Agent.objects.order_by().values_list("status").annotate(count=Count("id")).order_by()
    )
    versions = (
        AgentVersion.objects.order_by().values_list("status").annotate(count=Count("id")).order_by()
    )
    return [
        _gauge(
            "aimos_agents",
            "Agents by status",
            labels=["status"],
            rows=(((status,), agents.get(status, 0)) for status in AgentStatus.values),
        ),
        _gauge(
            "aimos_active_agents",
            "Agents ready to run",
            value=agents.get(AgentStatus.READY, 0),
        ),
        _gauge(
            "aimos_agent_versions",
            "Agent versions by build status (ready and failed are build outcomes)",
            labels=["status"],
            rows=(((status,), count) for status, count in versions),
        ),
    ]


def _system_families():
    from aimos.system import health_checks, health_score

    checks, workers, depths = health_checks()
    families = [
        _gauge(
            "aimos_info",
            "AIMOS version and environment",
            labels=["version", "environment"],
            rows=[((settings.AIMOS_VERSION, settings.AIMOS_ENVIRONMENT), 1)],
        ),
        _gauge("aimos_system_health_score", "Overall system health score", health_score(checks)),
        _gauge(
            "aimos_health_check",
            "1 when the check passes",
            labels=["check"],
            rows=(((name,), int(value == "ok")) for name, value in checks.items()),
        ),
        _gauge("aimos_workers", "Live RQ workers", value=len(workers)),
    ]
    if checks["redis"] == "ok":
        families.append(
            _gauge(
                "aimos_queue_depth",
                "Jobs waiting in each queue",
                labels=["queue"],
                rows=(((name,), depth) for name, depth in depths.items()),
            )
        )
    return families


class AimosCollector(Collector):
    """Every AIMOS metric, read when collected. A part whose source is down is left out
    (and logged); `aimos_health_check` says which."""

    def collect(self):
        yield from _system_families()
        for part in (_http_families, _execution_families, _agent_families):
            try:
                families = part()
            except Exception:
                logger.exception("Prometheus metrics: %s failed", part.__name__)
                continue
            yield from families


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format `accept` asks for (Prometheus text by default), and its
    content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AimosCollector())
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
