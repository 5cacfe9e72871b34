"""django-rq jobs of the executions app: thin, taking ids and calling services."""

from executions import services, supervisor


def run_execution(execution_id: str) -> str | None:
    return supervisor.run_execution(execution_id)


def run_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback (a crash, the job timeout, or the worker died): the run ends failed."""
    from executions.models import Execution

    execution = Execution.objects.filter(pk=job.args[0]).first() if job.args else None
    if execution is not None and not execution.is_terminal:
        services.finish(
            execution,
            "failed",
            reason=f"The run's job failed: {exc_type.__name__}: {exc_value}".rstrip(": "),
            error_type="lost" if exc_type.__name__ == "AbandonedJobError" else "sandbox_error",
        )


def deliver_webhook(delivery_id: str) -> bool:
    """One delivery attempt; RQ retries it (with the configured delays) while it fails."""
    from rq import get_current_job

    from executions import webhooks

    job = get_current_job()
    final = job is None or not job.retries_left
    return webhooks.deliver(delivery_id, final=final)
