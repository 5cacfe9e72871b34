"""django-rq jobs of the agents app: thin, taking ids and calling the build; and the function
that enqueues them (services call it on commit)."""

import django_rq
from django.conf import settings
from rq import Callback

from agents import builds
from core.live import flush


def enqueue_build(version_id) -> None:
    """Queue the build of a version on `builds`; a job that dies fails the version."""
    django_rq.get_queue("builds").enqueue(
        build_version,
        str(version_id),
        job_timeout=settings.AIMOS_BUILD_TIMEOUT,
        on_failure=Callback(build_job_failed),
    )


def build_version(version_id: str) -> str | None:
    try:
        version = builds.build_version(version_id)
    finally:
        flush()  # the feed's messages leave before the work horse exits
    return version.status if version else None


def build_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback (exception, job timeout, or the worker died): never leave a version
    `building`."""
    version_id = job.args[0] if job.args else None
    if version_id:
        builds.fail_build(version_id, f"{exc_type.__name__}: {exc_value}".rstrip(": "))
        flush()
