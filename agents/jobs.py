"""django-rq jobs of the agents app: thin, taking ids and calling services."""

from agents import services


def build_version(version_id: str) -> str | None:
    version = services.build_version(version_id)
    return version.status if version else None


def build_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback (exception, job timeout, or the worker died): never leave a version
    `building`."""
    version_id = job.args[0] if job.args else None
    if version_id:
        services.fail_build(version_id, f"{exc_type.__name__}: {exc_value}".rstrip(": "))
