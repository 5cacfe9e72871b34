"""The upkeep's part for sessions: sessions whose host stopped or never came end `failed`,
workspaces past the retention are deleted, deletions no host finished are finished. Each is
judged at a chosen moment (`now`), never by waiting."""

from datetime import timedelta

import pytest
from django.utils import timezone

from workspaces import recovery
from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.tests.daemons import TEST_HOST, activate, new_session

pytestmark = pytest.mark.django_db


def later(**delta):
    return timezone.now() + timedelta(**delta)


def test_a_session_whose_host_stopped_renewing_its_lease_fails(owner):
    session = new_session(owner)
    Session.claim(session.pk, host=TEST_HOST, lease_seconds=5)
    Session.activate(session.pk, host=TEST_HOST)

    assert recovery.sweep_lost_sessions(now=later(seconds=1))["sessions_lost"] == 0
    done = recovery.sweep_lost_sessions(now=later(seconds=10))

    assert done["sessions_lost"] == 1
    session.refresh_from_db()
    assert (session.status, session.error) == (SessionStatus.FAILED, recovery.HOST_STOPPED)
    assert session.host == ""


def test_a_start_no_host_took_up_fails_naming_the_missing_host(owner):
    session = new_session(owner)

    assert recovery.sweep_lost_sessions(now=later(seconds=30))["sessions_not_started"] == 0
    done = recovery.sweep_lost_sessions(now=later(seconds=recovery.UNCLAIMED_SECONDS + 1))

    assert done["sessions_not_started"] == 1
    session.refresh_from_db()
    assert session.status == SessionStatus.FAILED
    assert "sessionhost" in session.error


def test_an_ended_session_is_never_judged_lost(owner):
    session = activate(new_session(owner))
    Session.mark_stopped(session.pk, host=TEST_HOST)

    done = recovery.sweep_lost_sessions(now=later(days=1))

    assert done == {"sessions_lost": 0, "sessions_not_started": 0}
    session.refresh_from_db()
    assert session.status == SessionStatus.STOPPED


def test_the_workspace_of_a_session_stopped_past_the_retention_is_deleted(owner, settings):
    session = activate(new_session(owner))
    Session.mark_stopped(session.pk, host=TEST_HOST)
    session.workspace_dir.mkdir(parents=True)
    (session.workspace_dir / "kept.txt").write_text("until the retention")
    retention = timedelta(hours=settings.AIMOS_SESSION_RETENTION_HOURS)

    kept = recovery.sweep_workspaces(now=timezone.now() + retention - timedelta(minutes=1))
    assert kept["workspaces_deleted"] == 0
    assert session.workspace_dir.exists()
    done = recovery.sweep_workspaces(now=timezone.now() + retention + timedelta(minutes=1))

    assert done["workspaces_deleted"] == 1
    assert not session.directory.exists()
    session.refresh_from_db()
    assert session.workspace_deleted
    assert session.status == SessionStatus.STOPPED  # the record stays


def test_a_running_session_keeps_its_workspace_however_old(owner):
    session = activate(new_session(owner))
    session.workspace_dir.mkdir(parents=True)

    done = recovery.sweep_workspaces(now=later(days=365))

    assert done["workspaces_deleted"] == 0
    assert session.workspace_dir.exists()


def test_a_deletion_no_host_finished_is_finished(owner):
    session = new_session(owner)
    Session.mark_deleting(session.pk)
    Session.stop_unclaimed(session.pk)
    session.workspace_dir.mkdir(parents=True)

    assert recovery.sweep_workspaces(now=later(seconds=1))["sessions_removed"] == 0
    done = recovery.sweep_workspaces(now=later(seconds=recovery.DELETION_SECONDS + 1))

    assert done["sessions_removed"] == 1
    assert not Session.objects.filter(pk=session.pk).exists()
    assert not session.directory.exists()


def test_a_workspace_listed_as_expired_is_kept_when_its_session_stopped_again_since(owner):
    """The sweep lists expired sessions, then deletes each under its row's lock: one started
    and stopped again in between (its `stopped_at` now within the retention) is left alone."""
    session = activate(new_session(owner))
    listed_at_cutoff = timezone.now()
    Session.mark_stopped(session.pk, host=TEST_HOST)  # stopped again after the listing's cutoff
    session.workspace_dir.mkdir(parents=True)

    assert not recovery._delete_workspace(session.pk, listed_at_cutoff)

    assert session.workspace_dir.exists()
    session.refresh_from_db()
    assert not session.workspace_deleted
