"""The project's RQ workers: JSON jobs, and only the functions of our `jobs` modules."""

import logging

from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

logger = logging.getLogger(__name__)


class OwnJobsOnly:
    """A worker mixin: reads and writes jobs as JSON only, whatever serializer it is given, and
    runs a job only when it and its callbacks are functions of our `jobs` modules.

    django-rq passes `--serializer`, whose default is pickle: a worker that unpickles would run
    whatever code a forged job in Redis carries. A JSON job still names a function to import
    and call, so the name is checked too. A job that fails either check fails unrun."""

    def __init__(self, *args, serializer=None, **kwargs) -> None:
        super().__init__(*args, serializer=JSONSerializer, **kwargs)

    def perform_job(self, job, queue) -> bool:
        refused = foreign_function(job)
        if refused is not None:
            logger.error("refused job %s: %s", job.id, refused)
            self.handle_job_failure(job, queue, exc_string=f"refused: {refused}")
            return False
        return super().perform_job(job, queue)


class JSONWorker(OwnJobsOnly, Worker):
    """The worker of `manage.py rqworker` and `rqworker-pool` (settings.RQ's WORKER_CLASS)."""


JOB_MODULES = ("agents.jobs", "executions.jobs", "notifications.jobs", "aimos.jobs")


def foreign_function(job) -> str | None:
    """Why `job` may not run here (it names a function outside JOB_MODULES), or None."""
    try:
        if job.instance is not None:
            return "a job may not call a method of an object"
        names = [job.func_name]
    except Exception as exc:  # noqa: BLE001 — undecodable data is refused, not raised
        return f"unreadable job data ({type(exc).__name__})"
    for attribute in ("success_callback_name", "failure_callback_name", "stopped_callback_name"):
        name = getattr(job, f"_{attribute}", None)
        if name:
            names.append(name)
    for name in names:
        module, _, function = str(name).rpartition(".")
        if module not in JOB_MODULES or not function.isidentifier():
            return f"{name} is not a job of this project"
    return None


class SimpleJSONWorker(OwnJobsOnly, SimpleWorker):
    """The same rules, running jobs in its own process (the test suite's burst worker)."""


class RunWorker(OwnJobsOnly, SimpleWorker):
    """The worker of the `runs` queue: it never forks. Its `RunHost` supervises up to
    `AIMOS_RUNS_PER_WORKER` runs at once in threads of this process; a run's job only claims
    the run and hands it over, and the next job is taken only while the host has room.

    A warm shutdown (SIGTERM) takes no more jobs and waits for the runs held to end, up to
    `AIMOS_RUN_WORKER_GRACE_SECONDS`; the lost-run sweep ends what a killed worker held."""

    def work(self, *args, **kwargs) -> bool:
        from django.conf import settings

        from executions.host import RunHost
        from sandbox.warm import WarmPool

        pool = None
        if settings.AIMOS_WARM_SANDBOXES:
            pool = WarmPool(
                per_key=settings.AIMOS_WARM_SANDBOXES,
                total=settings.AIMOS_WARM_SANDBOXES_TOTAL,
                idle_seconds=settings.AIMOS_WARM_IDLE_SECONDS,
            )
        self.host = RunHost(
            settings.AIMOS_RUNS_PER_WORKER,
            db_connections=settings.AIMOS_RUN_DB_CONNECTIONS,
            pool=pool,
        ).start(current=True)
        try:
            return super().work(*args, **kwargs)
        finally:
            self.host.stop(grace=settings.AIMOS_RUN_WORKER_GRACE_SECONDS)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Wait for room in the host (staying alive for RQ meanwhile), then take a job."""
        while not self.host.wait_for_room(timeout=1.0):
            self.heartbeat()
            if self._stop_requested:
                return None
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


def ping() -> str:
    """Does nothing but answer: the baseline job of `bench/execute.py`."""
    return "pong"
