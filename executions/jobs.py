"""django-rq jobs of the executions app, thin, taking ids; and `enqueue_run`, the one way a
run's job is queued (services and the lost-run sweep queue through it)."""

import django_rq
from django.conf import settings
from rq import Callback

from executions.choices import ErrorType, ExecutionStatus
from executions.models import Execution
from executions.outcomes import finish
from executions.supervisor import Supervisor


def run_execution(execution_id: str) -> str | None:
    return Supervisor(execution_id).execute()


def run_job_failed(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback (a crash, the job timeout, or the worker died): the run ends failed."""
    execution = Execution.objects.filter(pk=job.args[0]).first() if job.args else None
    if execution is not None and not execution.is_terminal:
        finish(
            execution,
            ExecutionStatus.FAILED,
            reason=f"The run's job failed: {exc_type.__name__}: {exc_value}".rstrip(": "),
            error_type=ErrorType.LOST
            if exc_type.__name__ == "AbandonedJobError"
            else ErrorType.SANDBOX_ERROR,
        )


def run_job_id(execution_id, attempt: int) -> str:
    return f"run-{execution_id}-{attempt}"


def enqueue_run(execution_id, *, attempt: int = 0, depends_on=None):
    """Queue the run's job; its id names the attempt, so a lost job can be recognised."""
    return django_rq.get_queue("runs").enqueue(
        run_execution,
        str(execution_id),
        job_id=run_job_id(execution_id, attempt),
        job_timeout=settings.AIMOS_MAX_TIMEOUT_SECONDS + settings.AIMOS_MAX_PAUSE_SECONDS + 300,
        result_ttl=3600,
        failure_ttl=86400,
        depends_on=depends_on,
        on_failure=Callback(run_job_failed),
    )
