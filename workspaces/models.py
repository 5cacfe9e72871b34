"""Sessions: long-lived sandboxes, each with a workspace (a disk image of its own) that keeps
its files while the sandbox is stopped.

Where a session's things are on the machine of the session host — its disk, where it is
mounted (the sandbox's `/workspace`) and the socket of the daemon inside the sandbox, which
the web processes talk to — is said in one place, `workspaces.disks`.
"""

import uuid
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.owned import OwnedQuerySet
from sandbox.base import SessionSandbox
from workspaces import disks
from workspaces.choices import SessionStatus

LIVE = list(SessionStatus.live())
ENDED = list(SessionStatus.ended())


class SessionQuerySet(OwnedQuerySet):
    def visible(self):
        """Sessions not being deleted: a deleted session is gone for everyone at once, while
        its host removes its sandbox and workspace."""
        return self.filter(deleting=False)

    def live(self):
        return self.filter(status__in=LIVE)


class Session(models.Model):
    """A long-lived sandbox with a workspace, held by one session host while it runs.

    `starting → active ⇄ paused → stopped | failed`, and `stopped | failed → starting` again
    (the workspace is kept). A session host claims a starting session (`claim`), holds it with
    a lease it renews, and records how it stopped. Every change of `status` goes through a
    method here, each a conditional update that changes the row only from the states it
    allows; `host`, when given, fences it to the host holding the session.
    """

    OWNER_FIELD = "owner"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="workspace_sessions"
    )
    agent = models.ForeignKey(
        "agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="sessions"
    )
    version = models.ForeignKey(
        "agents.AgentVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sessions",
    )
    backend = models.CharField(max_length=16)
    status = models.CharField(
        max_length=16,
        choices=SessionStatus.choices,
        default=SessionStatus.STARTING,
        db_index=True,
    )
    error = models.TextField(blank=True)

    workspace_mb = models.PositiveIntegerField()
    workspace_bytes = models.PositiveBigIntegerField(default=0)
    workspace_deleted = models.BooleanField(default=False)
    idle_timeout_seconds = models.PositiveIntegerField()
    memory_mb = models.PositiveIntegerField()
    cpus = models.FloatField()
    pids = models.PositiveIntegerField()
    network = models.BooleanField(default=False)

    host = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    deleting = models.BooleanField(default=False)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_active_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "status"]),
            models.Index(fields=["status", "lease_expires_at"]),
        ]

    def __str__(self) -> str:
        return f"session {self.pk} ({self.status})"

    # --- where its things are -----------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return disks.directory_of(self.pk)

    @property
    def workspace_dir(self) -> Path:
        return disks.disk_of(self.pk).workspace

    @property
    def control_dir(self) -> Path:
        return disks.control_dir_of(self.pk)

    @property
    def socket_path(self) -> Path:
        return self.control_dir / SessionSandbox.SOCKET_NAME

    @property
    def is_live(self) -> bool:
        return self.status in LIVE

    # --- transitions (each changes the row only from the states it names) ---------------------

    @classmethod
    def _move(cls, pk, from_states, *, held_by: str | None = None, where=None, **changes) -> bool:
        """A conditional update from `from_states`; with `held_by`, only while that host holds
        the session ("": while none does)."""
        rows = cls.objects.filter(pk=pk, status__in=from_states, **(where or {}))
        if held_by is not None:
            rows = rows.filter(host=held_by)
        return rows.update(**changes) == 1

    @classmethod
    def request_start(cls, pk) -> bool:
        """`stopped | failed → starting` (the workspace is kept, or made anew when the retention
        deleted it), waiting for a session host to claim it."""
        now = timezone.now()
        return cls._move(
            pk,
            ENDED,
            where={"deleting": False},
            status=SessionStatus.STARTING,
            error="",
            held_by="",
            lease_expires_at=None,
            started_at=now,
            last_active_at=now,
            stopped_at=None,
        )

    @classmethod
    def claim(cls, pk, *, host: str, lease_seconds: int) -> bool:
        """A starting session no host holds yet becomes `host`'s, with a lease."""
        unclaimed = cls.objects.filter(
            pk=pk, status=SessionStatus.STARTING, host="", deleting=False
        )
        return unclaimed.update(host=host, lease_expires_at=_lease(lease_seconds)) == 1

    @classmethod
    def activate(cls, pk, *, host: str) -> bool:
        """`starting → active` once its sandbox answers, by the host that claimed it."""
        _named(host)
        return cls._move(
            pk,
            [SessionStatus.STARTING],
            held_by=host,
            status=SessionStatus.ACTIVE,
            workspace_deleted=False,
            last_active_at=timezone.now(),
        )

    @classmethod
    def mark_paused(cls, pk, *, host: str) -> bool:
        _named(host)
        return cls._move(
            pk,
            [SessionStatus.ACTIVE],
            held_by=host,
            status=SessionStatus.PAUSED,
            last_active_at=timezone.now(),
        )

    @classmethod
    def mark_resumed(cls, pk, *, host: str) -> bool:
        _named(host)
        return cls._move(
            pk,
            [SessionStatus.PAUSED],
            held_by=host,
            status=SessionStatus.ACTIVE,
            last_active_at=timezone.now(),
        )

    @classmethod
    def mark_stopped(cls, pk, *, host: str, error: str = "") -> bool:
        """The host that held it stopped its sandbox (asked to, idle, or itself stopping)."""
        _named(host)
        return cls._move(pk, LIVE, held_by=host, **_ended(SessionStatus.STOPPED, error))

    @classmethod
    def stop_unclaimed(cls, pk) -> bool:
        """A starting session no host has claimed yet is stopped at once: none will."""
        return cls._move(
            pk, [SessionStatus.STARTING], held_by="", **_ended(SessionStatus.STOPPED, "")
        )

    @classmethod
    def fail(cls, pk, error: str, *, host: str | None = None, expired_by=None) -> bool:
        """A live session ends `failed` with `error`. With `host`, only while that host holds
        it; with `expired_by`, only while its lease had expired by that moment."""
        where = None if expired_by is None else {"lease_expires_at__lt": expired_by}
        return cls._move(pk, LIVE, held_by=host, where=where, **_ended(SessionStatus.FAILED, error))

    @classmethod
    def fail_unclaimed(cls, pk, error: str, *, asked_before) -> bool:
        """A start no session host took up since before `asked_before` ends `failed`."""
        return cls._move(
            pk,
            [SessionStatus.STARTING],
            held_by="",
            where={"started_at__lt": asked_before},
            **_ended(SessionStatus.FAILED, error),
        )

    @classmethod
    def renew_leases(cls, pks, *, host: str, lease_seconds: int) -> set[str]:
        """Renew, in one statement, the leases of the sessions `host` holds among `pks`; the
        ids renewed."""
        if not pks:
            return set()
        expires = _lease(lease_seconds)
        held = cls.objects.filter(pk__in=list(pks), host=host, status__in=LIVE)
        held.update(lease_expires_at=expires)
        renewed = held.filter(lease_expires_at=expires).values_list("pk", flat=True)
        return {str(pk) for pk in renewed}

    @classmethod
    def mark_deleting(cls, pk) -> bool:
        """The session is deleted for its owner at once; its host removes the rest."""
        return cls.objects.filter(pk=pk, deleting=False).update(deleting=True) == 1

    @classmethod
    def mark_workspace_deleted(cls, pk, *, stopped_before) -> bool:
        """The workspace of a session ended since before `stopped_before` was deleted."""
        return cls._move(
            pk,
            ENDED,
            where={"stopped_at__lt": stopped_before, "workspace_deleted": False},
            workspace_deleted=True,
            workspace_bytes=0,
        )

    @classmethod
    def touch(cls, pk, *, unless_since: timedelta) -> bool:
        """Record use of the session, at most once per `unless_since` (one write, no read)."""
        now = timezone.now()
        return (
            cls.objects.filter(pk=pk, last_active_at__lt=now - unless_since).update(
                last_active_at=now
            )
            == 1
        )

    @classmethod
    def record_usage(cls, pk, used_bytes: int) -> None:
        cls.objects.filter(pk=pk).exclude(workspace_bytes=used_bytes).update(
            workspace_bytes=used_bytes
        )


def _named(host: str) -> None:
    if not host:
        raise ValueError("a session host's own transitions name the host")


def _lease(seconds: int):
    return timezone.now() + timedelta(seconds=seconds)


def _ended(status: str, error: str) -> dict:
    return {
        "status": status,
        "error": error,
        "host": "",
        "lease_expires_at": None,
        "stopped_at": timezone.now(),
    }
