"""Periodic upkeep, run by the workers: a job that reschedules itself.

`schedule_maintenance()` (called by the launcher, idempotent thanks to the fixed job id)
starts the cycle; each run repairs what dead workers left behind.
"""

import logging
from datetime import timedelta

from django.conf import settings

logger = logging.getLogger(__name__)

JOB_ID = "aimos-maintenance"


def maintenance() -> dict:
    from agents.services import fail_stale_builds
    from aimos import feed
    from aimos.system import sample_for_maintenance
    from executions.services import sweep_lost_runs

    done = {"stale_builds": fail_stale_builds(), **sweep_lost_runs()}
    done["metrics_sample"] = sample_for_maintenance()
    done["metrics_update"] = feed.broadcast_metrics_if_due()
    schedule_maintenance()
    return done


def schedule_maintenance() -> None:
    import django_rq

    queue = django_rq.get_queue("default")
    queue.enqueue_in(
        timedelta(seconds=settings.AIMOS_MAINTENANCE_INTERVAL), maintenance, job_id=JOB_ID
    )
