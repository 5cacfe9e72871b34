"""Upkeep: repairing what dead workers left behind, independent of any one worker.

`manage.py upkeep` (a process of its own, started and restarted by the launcher) makes a pass
every AIMOS_MAINTENANCE_INTERVAL seconds: runs whose worker died end `lost` (or are queued
again), webhook deliveries whose job was lost are queued again, builds stuck `building`
fail, sessions whose host stopped end `failed` and workspaces past their retention are
deleted (`workspaces.recovery`), host metrics are sampled and the feed's metrics sent.
A Redis key with a time to live lets one process of the whole platform make each pass,
however many hosts run one; a worker dying changes nothing here. Sandboxes are a host's
own, so each host's upkeep sweeps those of its dead workers at every pass.
"""

from __future__ import annotations

import logging
import secrets
import threading

import django_rq
import psutil
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from agents.builds import fail_stale_builds
from aimos import system
from aimos.system import sample_for_maintenance
from executions.models import IdempotencyKey
from executions.recovery import sweep_lost_runs, sweep_sandboxes
from notifications import feed
from notifications.recovery import sweep_deliveries
from workspaces.recovery import sweep_lost_sessions, sweep_workspaces

logger = logging.getLogger("aimos.upkeep")

LOCK_KEY = "aimos:upkeep:pass"


def upkeep_pass() -> dict:
    """One pass of upkeep; what it did."""
    done = {"stale_builds": fail_stale_builds(), **sweep_lost_runs()}
    done["deliveries_requeued"] = sweep_deliveries()
    done["idempotency_keys_pruned"] = IdempotencyKey.prune()
    done.update(sweep_lost_sessions())
    done.update(sweep_workspaces())
    done["metrics_sample"] = sample_for_maintenance()
    done["metrics_update"] = feed.broadcast_metrics_if_due(current_metrics)
    return done


def current_metrics() -> dict:
    """The host as a feed's `metrics_update` shows it: CPU over a short window, memory now,
    and the health score of `aimos.system` (the share of its checks that pass)."""
    checks, _, _ = system.health_checks()
    return {
        "cpu_usage": round(psutil.cpu_percent(interval=system.SAMPLE_WINDOW_SECONDS), 2),
        "memory_usage": round(psutil.virtual_memory().percent, 2),
        "system_health_score": system.health_score(checks),
        "timestamp": timezone.now().isoformat(),
    }


def take_turn(connection, interval: float) -> bool:
    """True when this process makes the pass of this interval (no other process has)."""
    ttl_ms = max(100, int(interval * 1000 * 0.9))
    return bool(connection.set(LOCK_KEY, secrets.token_hex(8), nx=True, px=ttl_ms))


def run(stop: threading.Event) -> None:
    """Make a pass every interval until `stop` is set; a failing pass is logged, not fatal."""
    connection = django_rq.get_connection("default")
    while not stop.is_set():
        interval = settings.AIMOS_MAINTENANCE_INTERVAL
        try:
            # Sandboxes are this host's: every host's upkeep sweeps its own, every pass.
            swept = sweep_sandboxes()
            if swept:
                logger.info("upkeep: swept the sandboxes of dead workers: %s", swept)
            if take_turn(connection, interval):
                done = upkeep_pass()
                if any(done.values()):
                    logger.info("upkeep: %s", done)
        except Exception:  # noqa: BLE001 — the next pass tries again
            logger.exception("upkeep pass failed")
        finally:
            close_old_connections()
            connections.close_all()
        stop.wait(interval)
