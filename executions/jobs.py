"""django-rq jobs of the executions app, thin, taking ids; and `enqueue_run`, the one way a
run's job is queued (services and the lost-run sweep queue through it)."""

import django_rq
from django.conf import settings

from executions.host import RunHost
from executions.supervisor import Supervisor


def run_execution(execution_id: str, queued: str | None = None) -> str | None:
    """Take the run if it still waits for this job (queued for attempt `queued`): the host of
    a run worker supervises it in a thread and the job returns at once; elsewhere (a burst
    worker) it is supervised here, by a host of its own, and the job returns its status."""
    supervisor = Supervisor(execution_id, queued=None if queued is None else int(queued))
    host = RunHost.current()
    if host is not None:
        return host.adopt(supervisor)
    host = RunHost(capacity=1).start()
    try:
        return host.supervise_here(supervisor)
    finally:
        host.stop()


def run_job_id(execution_id, attempt: int) -> str:
    return f"run-{execution_id}-{attempt}"


def enqueue_run(execution_id, *, attempt: int = 0, depends_on=None):
    """Queue the run's job for its attempt `attempt` (the number the run has while it waits);
    the job's id names it, so the sweep can tell whether it is still there."""
    return django_rq.get_queue("runs").enqueue(
        run_execution,
        str(execution_id),
        str(attempt),
        job_id=run_job_id(execution_id, attempt),
        job_timeout=settings.AIMOS_MAX_TIMEOUT_SECONDS + settings.AIMOS_MAX_PAUSE_SECONDS + 300,
        result_ttl=3600,
        failure_ttl=86400,
        depends_on=depends_on,
    )
