"""Is a job still on its way? The question the upkeep sweeps ask of a row that waits for a
job (a pending run, a pending webhook delivery) before queueing another one."""

from __future__ import annotations

from datetime import datetime

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue


def queued_job_ids(queue: Queue) -> frozenset[str]:
    """The ids waiting in `queue` now: one read for a whole sweep, so that asking about N rows
    costs N lookups, not N scans of the queue."""
    return frozenset(queue.get_job_ids())


def job_on_its_way(
    queue: Queue, job_id: str, *, started_since: datetime, queued: frozenset[str] = frozenset()
) -> bool:
    """True when the job waits in `queue` (or for a dependency, or for its next retry), or
    was taken by a worker at or after `started_since`. False when it is gone (Redis lost it),
    ended, was taken earlier (its worker died with it), or sits in no queue (its worker died
    between taking it and starting it). A worker taking it between two reads is seen on the
    second. `queued`: the queue's ids read at the start of the sweep (`queued_job_ids`); a
    job still queued and among them counts as on its way without a scan of the queue (should
    its worker have taken it since and died, the next sweep sees it)."""
    for _ in range(2):
        try:
            job = Job.fetch(job_id, connection=queue.connection)
        except NoSuchJobError:
            return False
        status = job.get_status(refresh=False)
        if status in (JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return True
        if status == JobStatus.STARTED:
            return job.started_at is not None and job.started_at >= started_since
        if status != JobStatus.QUEUED:
            return False
        if job_id in queued or queue.connection.lpos(queue.key, job_id) is not None:
            return True
    return False
