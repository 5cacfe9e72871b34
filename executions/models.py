"""Executions (runs of an agent version), their event log, checkpoints and batches."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

from core.owned import OwnedQuerySet
from executions.choices import Control, ErrorType, ExecutionStatus


class Batch(models.Model):
    """Several agents run with one request (`POST execute`), at once or one after another."""

    OWNER_FIELD = "user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches"
    )
    parallel = models.BooleanField(default=True)
    input = models.JSONField(null=True, blank=True)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"batch {self.pk}"


class ExecutionQuerySet(OwnedQuerySet):
    def active(self):
        return self.filter(status__in=ExecutionStatus.active())

    def matching(
        self,
        *,
        status: str | None = None,
        agent_id=None,
        version_id=None,
        batch_id=None,
        created_after=None,
        created_before=None,
    ):
        """The executions that meet every filter given (None: not filtered), as the lists of
        the API and of the dashboard filter them."""
        lookups = {
            "status": status,
            "agent_id": agent_id,
            "version_id": version_id,
            "batch_id": batch_id,
            "created_at__gte": created_after,
            "created_at__lt": created_before,
        }
        return self.filter(**{lookup: value for lookup, value in lookups.items() if value})


class Execution(models.Model):
    """One run of an agent version.

    `pending → running ⇄ paused → completed | failed | cancelled | timed_out`; terminal
    states are final. Every change of `status` goes through a method here, each a
    conditional update that changes the row only from the states it allows.
    """

    OWNER_FIELD = "user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="executions")
    version = models.ForeignKey(
        "agents.AgentVersion", on_delete=models.CASCADE, related_name="executions"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="executions"
    )
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="executions"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    source_checkpoint = models.ForeignKey(
        "Checkpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="restored_runs"
    )

    status = models.CharField(
        max_length=16,
        choices=ExecutionStatus.choices,
        default=ExecutionStatus.PENDING,
        db_index=True,
    )
    error_type = models.CharField(max_length=16, choices=ErrorType.choices, blank=True)
    control = models.CharField(max_length=8, choices=Control.choices, blank=True, default="")

    input = models.JSONField(null=True, blank=True)
    initial_state = models.JSONField(null=True, blank=True)
    env = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    timeout_seconds = models.PositiveIntegerField()

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    peak_memory_mb = models.FloatField(null=True, blank=True)
    cpu_ms = models.PositiveIntegerField(null=True, blank=True)

    worker = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveSmallIntegerField(default=0)
    sandbox_started = models.BooleanField(default=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["agent", "status"]),
            models.Index(fields=["status", "lease_expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in ExecutionStatus.terminal()

    # --- transitions (each changes the row only from the states it names) -------------------

    @classmethod
    def _move(cls, pk, from_states, **changes) -> bool:
        return cls.objects.filter(pk=pk, status__in=from_states).update(**changes) == 1

    @classmethod
    def claim(cls, pk, *, worker: str, lease_seconds: int) -> bool:
        """`pending → running` for exactly one worker, which then holds a lease on the run."""
        now = timezone.now()
        return cls._move(
            pk,
            [ExecutionStatus.PENDING],
            status=ExecutionStatus.RUNNING,
            started_at=now,
            worker=worker,
            attempt=F("attempt") + 1,
            sandbox_started=False,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )

    @classmethod
    def renew_lease(cls, pk, *, lease_seconds: int) -> bool:
        expires = timezone.now() + timedelta(seconds=lease_seconds)
        return cls._move(
            pk, [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED], lease_expires_at=expires
        )

    @classmethod
    def mark_sandbox_started(cls, pk) -> None:
        cls.objects.filter(pk=pk).update(sandbox_started=True)

    @classmethod
    def mark_paused(cls, pk) -> bool:
        return cls._move(
            pk,
            [ExecutionStatus.RUNNING],
            status=ExecutionStatus.PAUSED,
            paused_at=timezone.now(),
            control="",
        )

    @classmethod
    def mark_resumed(cls, pk) -> bool:
        return cls._move(
            pk, [ExecutionStatus.PAUSED], status=ExecutionStatus.RUNNING, paused_at=None, control=""
        )

    @classmethod
    def requeue(cls, pk) -> bool:
        """`running → pending` for a run whose worker died before the agent started."""
        return cls._move(
            pk,
            [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
            status=ExecutionStatus.PENDING,
            worker="",
            lease_expires_at=None,
            started_at=None,
        )

    @classmethod
    def request_control(cls, pk, control: str) -> bool:
        """Record what the user wants; only from a state where it makes sense."""
        allowed = {
            Control.PAUSE: [ExecutionStatus.RUNNING],
            Control.RESUME: [ExecutionStatus.PAUSED],
            Control.CANCEL: [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
        }[control]
        return cls._move(pk, allowed, control=control)

    @classmethod
    def finish(
        cls,
        pk,
        status: str,
        *,
        from_states=None,
        output=None,
        error_message: str = "",
        error_type: str = "",
        duration_ms: int | None = None,
        peak_memory_mb: float | None = None,
        cpu_ms: int | None = None,
    ) -> bool:
        """Move an active execution to the terminal `status`; False when it had ended already."""
        if status not in ExecutionStatus.terminal():
            raise ValueError(f"{status} is not a terminal status")
        return cls._move(
            pk,
            from_states or ExecutionStatus.active(),
            status=status,
            output=output,
            error_message=error_message,
            error_type=error_type if status == ExecutionStatus.FAILED else "",
            finished_at=timezone.now(),
            duration_ms=duration_ms,
            peak_memory_mb=peak_memory_mb,
            cpu_ms=cpu_ms,
            paused_at=None,
            control="",
            lease_expires_at=None,
        )


class ExecutionEvent(models.Model):
    """One event of a run: `seq` 1, 2, 3 … with no gaps per execution (DESIGN §5)."""

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=64)
    data = models.JSONField(default=dict)
    timestamp = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["execution", "seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "seq"], name="event_seq_unique_per_execution"
            )
        ]

    def __str__(self) -> str:
        return f"{self.execution_id} #{self.seq} {self.type}"

    def as_message(self) -> dict:
        """The whole event, as the JSON list and WebSocket messages carry it."""
        return {
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
            "timestamp": self.timestamp.isoformat(),
            "execution_id": str(self.execution_id),
        }


class Checkpoint(models.Model):
    """State an agent saved with `ctx.checkpoint(state)`; `seq` is that of its event."""

    OWNER_FIELD = "execution__user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="checkpoints")
    seq = models.PositiveIntegerField()
    label = models.CharField(max_length=200, blank=True)
    state = models.JSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["execution", "seq"]

    def __str__(self) -> str:
        return self.label or f"checkpoint {self.seq}"
