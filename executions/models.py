"""Executions (runs of an agent version), their event log, checkpoints and batches.

JSON that runs carry (inputs, states, outputs, event data) is stored intact, U+0000
included, although PostgreSQL's jsonb cannot hold that character: `RunJSONField` escapes it
reversibly on the way in and restores it on the way out (see `escape_nul`). Text columns
(`error_message`, a checkpoint's `label`) hold U+0000 as U+FFFD instead (`text_column`).
"""

import json
import re
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

from core.owned import OwnedQuerySet
from executions.choices import Control, ErrorType, ExecutionStatus

# U+0000 is stored as MARK + "0" and MARK itself as MARK + MARK. MARK is a private-use
# character, so ordinary data is stored as it is and stays searchable with jsonb lookups.
MARK = "\ue000"
_ESCAPED = re.compile(MARK + "([" + MARK + "0])")


def _escape_text(text: str) -> str:
    return text.replace(MARK, MARK + MARK).replace("\x00", MARK + "0")


def _unescape_text(text: str) -> str:
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else MARK, text)


def _walk(value, text):
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(k) if isinstance(k, str) else k: _walk(v, text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, text) for v in value]
    return value


def escape_nul(value):
    """`value` with U+0000 (and MARK) escaped in every string and key; `unescape_nul` undoes it."""
    return _walk(value, _escape_text)


def unescape_nul(value):
    return _walk(value, _unescape_text)


def text_column(text: str) -> str:
    """`text` as a PostgreSQL text column can hold it: U+0000 becomes U+FFFD."""
    return text.replace("\x00", "\ufffd")


class RunJSONEncoder(json.JSONEncoder):
    """Encodes as `json` does, with U+0000 escaped (values without it or MARK are untouched)."""

    def encode(self, o) -> str:
        encoded = super().encode(o)
        if any(s in encoded for s in ("\\u0000", "\x00", "\\ue000", MARK)):
            # the cheap test above may also match an escaped backslash; escaping is exact
            encoded = super().encode(escape_nul(o))
        return encoded


class RunJSONDecoder(json.JSONDecoder):
    """Decodes what `RunJSONEncoder` wrote, U+0000 restored."""

    def decode(self, s, *args, **kwargs):
        value = super().decode(s, *args, **kwargs)
        if MARK in s or "\\ue000" in s:
            value = unescape_nul(value)
        return value


class RunJSONField(models.JSONField):
    """A jsonb column that stores any JSON value, U+0000 included (module docstring).

    The encoding is a matter of Python alone (the column is a plain jsonb), so migrations see a
    plain JSONField: no migration pins these classes, and a historical model reads the raw form.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("encoder", RunJSONEncoder)
        kwargs.setdefault("decoder", RunJSONDecoder)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        kwargs.pop("encoder", None)
        kwargs.pop("decoder", None)
        return name, "django.db.models.JSONField", args, kwargs


class Batch(models.Model):
    """Several agents run with one request (`POST execute`), at once or one after another."""

    OWNER_FIELD = "user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches"
    )
    parallel = models.BooleanField(default=True)
    input = RunJSONField(null=True, blank=True)
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
    # A task of a session (`workspaces`): the run's /workspace is the session's. SET_NULL: a
    # run is a record of its own (events, checkpoints, outcome) that outlives its session, and
    # deleting a session is never blocked by the runs it had.
    session = models.ForeignKey(
        "workspaces.Session",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
    )

    status = models.CharField(
        max_length=16,
        choices=ExecutionStatus.choices,
        default=ExecutionStatus.PENDING,
        db_index=True,
    )
    error_type = models.CharField(max_length=16, choices=ErrorType.choices, blank=True)
    control = models.CharField(max_length=8, choices=Control.choices, blank=True, default="")

    input = RunJSONField(null=True, blank=True)
    initial_state = RunJSONField(null=True, blank=True)
    env = models.JSONField(default=dict, blank=True)
    output = RunJSONField(null=True, blank=True)
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
    def _move(
        cls, pk, from_states, *, fence: int | None = None, where: dict | None = None, **changes
    ) -> bool:
        """A conditional update from `from_states`; with `fence` (an attempt number), only
        while the run is still that attempt (a worker that lost its lease to another attempt
        changes nothing); `where`: more conditions."""
        rows = cls.objects.filter(pk=pk, status__in=from_states, **(where or {}))
        if fence is not None:
            rows = rows.filter(attempt=fence)
        return rows.update(**changes) == 1

    @classmethod
    def claim(cls, pk, *, worker: str, lease_seconds: int, queued: int | None = None) -> bool:
        """`pending → running` for exactly one worker, which then holds a lease on the run.
        With `queued` (the attempt number its job was queued for), only while the run still
        waits for that job: a job that was replaced (`requeue_pending`) claims nothing."""
        now = timezone.now()
        return cls._move(
            pk,
            [ExecutionStatus.PENDING],
            fence=queued,
            status=ExecutionStatus.RUNNING,
            started_at=now,
            worker=worker,
            attempt=F("attempt") + 1,
            sandbox_started=False,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )

    @classmethod
    def renew_leases(cls, attempts: dict, *, lease_seconds: int) -> set[str]:
        """Renew, in one statement, the lease of each run `{id: attempt}` still held by that
        attempt; the ids renewed."""
        if not attempts:
            return set()
        expires = timezone.now() + timedelta(seconds=lease_seconds)
        held = models.Q()
        for pk, attempt in attempts.items():
            held |= models.Q(pk=pk, attempt=attempt)
        active = [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED]
        cls.objects.filter(held, status__in=active).update(lease_expires_at=expires)
        renewed = cls.objects.filter(held, status__in=active, lease_expires_at=expires)
        return {str(pk) for pk in renewed.values_list("pk", flat=True)}

    @classmethod
    def mark_sandbox_started(cls, pk, *, attempt: int | None = None) -> bool:
        """Written before the sandbox starts: from here on the agent may have run, so the run
        is never queued again."""
        return cls._move(
            pk,
            [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
            fence=attempt,
            sandbox_started=True,
        )

    @classmethod
    def mark_paused(cls, pk, *, attempt: int | None = None) -> bool:
        return cls._move(
            pk,
            [ExecutionStatus.RUNNING],
            fence=attempt,
            status=ExecutionStatus.PAUSED,
            paused_at=timezone.now(),
            control="",
        )

    @classmethod
    def mark_resumed(cls, pk, *, attempt: int | None = None) -> bool:
        return cls._move(
            pk,
            [ExecutionStatus.PAUSED],
            fence=attempt,
            status=ExecutionStatus.RUNNING,
            paused_at=None,
            control="",
        )

    @classmethod
    def requeue(cls, pk, *, attempt: int | None = None, expired_by=None) -> bool:
        """`running → pending` for a run whose worker (of `attempt`) died before the agent
        started: only while its sandbox is not started and (with `expired_by`) its lease had
        expired by then."""
        where = {"sandbox_started": False}
        if expired_by is not None:
            where["lease_expires_at__lt"] = expired_by
        return cls._move(
            pk,
            [ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
            fence=attempt,
            where=where,
            status=ExecutionStatus.PENDING,
            worker="",
            lease_expires_at=None,
            started_at=None,
        )

    @classmethod
    def requeue_pending(cls, pk, *, queued: int) -> bool:
        """A pending run whose job (queued for attempt `queued`) vanished gets the next number:
        its new job claims it, the old one (should it turn up) cannot."""
        return cls._move(pk, [ExecutionStatus.PENDING], fence=queued, attempt=F("attempt") + 1)

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
        attempt: int | None = None,
        expired_by=None,
    ) -> bool:
        """Move an active execution to the terminal `status`; False when it had ended already
        (or, with `attempt`, when another attempt holds it now; with `expired_by`, when its
        lease was renewed after that moment)."""
        if status not in ExecutionStatus.terminal():
            raise ValueError(f"{status} is not a terminal status")
        return cls._move(
            pk,
            from_states or ExecutionStatus.active(),
            fence=attempt,
            where=None if expired_by is None else {"lease_expires_at__lt": expired_by},
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
    data = RunJSONField(default=dict)
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
    state = RunJSONField(null=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["execution", "seq"]

    def __str__(self) -> str:
        return self.label or f"checkpoint {self.seq}"


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` a user sent with a request that starts runs, kept for
    `IDEMPOTENCY_TTL`: the same key again gives back what the first request started (an
    execution or a batch), never a second run. `request_hash` tells a retry of the same
    request from another request that reused the key. One row per (user, key): of two
    concurrent requests with one key, one inserts it and the other waits, then finds it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys"
    )
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    execution = models.ForeignKey(
        Execution, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.key}"

    @classmethod
    def prune(cls, *, now=None) -> int:
        """Forget keys older than `IDEMPOTENCY_TTL`; how many were deleted."""
        cutoff = (now or timezone.now()) - IDEMPOTENCY_TTL
        deleted, _ = cls.objects.filter(created_at__lt=cutoff).delete()
        return deleted


IDEMPOTENCY_TTL = timedelta(hours=24)
