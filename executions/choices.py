from django.db import models


class ExecutionStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.PENDING, cls.RUNNING, cls.PAUSED)

    @classmethod
    def terminal(cls) -> tuple[str, ...]:
        return (cls.COMPLETED, cls.FAILED, cls.CANCELLED, cls.TIMED_OUT)


class ErrorType(models.TextChoices):
    EXCEPTION = "exception"
    OOM_KILLED = "oom_killed"
    RESOURCE_LIMIT = "resource_limit"
    OUTPUT_LIMIT = "output_limit"
    LOST = "lost"
    SANDBOX_ERROR = "sandbox_error"


class Control(models.TextChoices):
    """What a user asked of a running execution; the worker holding it applies it."""

    NONE = ""
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


TERMINAL_EVENTS = {
    ExecutionStatus.COMPLETED: "run_completed",
    ExecutionStatus.FAILED: "run_failed",
    ExecutionStatus.CANCELLED: "run_cancelled",
    ExecutionStatus.TIMED_OUT: "run_timed_out",
}
