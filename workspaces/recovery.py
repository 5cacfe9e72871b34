"""Repairing sessions whose host went away, and the retention of workspaces; called by the
upkeep process (`aimos.upkeep`) on its pass.

- A live session whose lease expired lost its host: it ends `failed` ("its host stopped"),
  its tasks are asked to end, and its workspace is unmounted (its sandbox died with the host,
  or is removed by the backend's sweep).
- A start no session host took up within UNCLAIMED_SECONDS ends `failed`: no host is running.
- The workspace of a session stopped (or failed) longer than AIMOS_SESSION_RETENTION_HOURS is
  deleted; the row stays, `workspace_deleted`.
- A deleted session whose host never finished (it died, or none was running) is removed.

Every change is a conditional update (the lease still expired, the session still ended) or
made under the session's row lock, so a host or a user acting at the same moment is never
undone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from workspaces import disks
from workspaces.models import ENDED, Session
from workspaces.services import cancel_tasks
from workspaces.waits import announce

logger = logging.getLogger(__name__)

HOST_STOPPED = "its host stopped"
NOT_STARTED = "no session host started it (is `manage.py sessionhost` running?)"
# How long a start may wait for a session host to take it up.
UNCLAIMED_SECONDS = 60
# How long a deleted session's host has to remove it before the upkeep does.
DELETION_SECONDS = 60


def sweep_lost_sessions(now=None) -> dict:
    """Sessions whose host stopped (lease expired) or never came end `failed`."""
    now = now or timezone.now()
    lost = 0
    expired = Session.objects.live().exclude(host="").filter(lease_expires_at__lt=now)
    for pk in expired.values_list("pk", flat=True):
        if Session.fail(pk, HOST_STOPPED, expired_by=now):
            lost += 1
            _quietly(cancel_tasks, pk, "cancel the tasks of lost session")
            _quietly(disks.unmount, pk, "unmount the workspace of lost session")
            announce(pk)
    not_started = 0
    asked_before = now - timedelta(seconds=UNCLAIMED_SECONDS)
    unclaimed = Session.objects.live().filter(host="", started_at__lt=asked_before)
    for pk in unclaimed.values_list("pk", flat=True):
        if Session.fail_unclaimed(pk, NOT_STARTED, asked_before=asked_before):
            announce(pk)
            not_started += 1
    return {"sessions_lost": lost, "sessions_not_started": not_started}


def sweep_workspaces(now=None) -> dict:
    """Workspaces past the retention are deleted; deletions no host finished are finished."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.AIMOS_SESSION_RETENTION_HOURS)
    expired = Session.objects.filter(
        status__in=ENDED, stopped_at__lt=cutoff, workspace_deleted=False, deleting=False
    )
    deleted = sum(_delete_workspace(pk, cutoff) for pk in expired.values_list("pk", flat=True))
    abandoned = Session.objects.filter(
        deleting=True,
        status__in=ENDED,
        stopped_at__lt=now - timedelta(seconds=DELETION_SECONDS),
    )
    removed = sum(_finish_deletion(pk) for pk in abandoned.values_list("pk", flat=True))
    return {"workspaces_deleted": deleted, "sessions_removed": removed}


def _delete_workspace(pk, cutoff) -> bool:
    # Under the row's lock: a start asked meanwhile waits, then finds the workspace gone.
    with transaction.atomic():
        session = _locked(pk)
        # Read again under the lock: started and stopped again since it was listed, it is
        # not past the retention any more.
        if (
            session is None
            or session.status not in ENDED
            or session.deleting
            or session.workspace_deleted
            or session.stopped_at is None
            or session.stopped_at >= cutoff
        ):
            return False
        if not _quietly(disks.remove_workspace, pk, "delete the workspace of session"):
            return False
        return Session.mark_workspace_deleted(pk, stopped_before=cutoff)


def _finish_deletion(pk) -> bool:
    with transaction.atomic():
        session = _locked(pk)
        if session is None or session.status not in ENDED or not session.deleting:
            return False
        if not _quietly(disks.remove_workspace, pk, "remove deleted session"):
            return False
        session.delete()
    announce(pk)
    return True


def _locked(pk) -> Session | None:
    return Session.objects.select_for_update().filter(pk=pk).first()


def _quietly(call, pk, what: str) -> bool:
    try:
        call(pk)
        return True
    except Exception:  # noqa: BLE001 — the next pass tries again
        logger.exception("could not %s %s", what, pk)
        return False
