"""A session's states change only through its transitions, each from the states it allows and,
where a host acts, only for the host holding it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.tests.daemons import new_session

pytestmark = pytest.mark.django_db

HOST, OTHER_HOST = "host-a:1", "host-b:2"


def status(session) -> str:
    session.refresh_from_db()
    return session.status


@pytest.fixture
def starting(owner):
    return new_session(owner)


def test_a_new_session_is_starting_and_held_by_no_host(starting):
    assert starting.status == SessionStatus.STARTING
    assert starting.host == ""
    assert starting.lease_expires_at is None


def test_one_host_claims_a_starting_session_and_no_other(starting):
    assert Session.claim(starting.pk, host=HOST, lease_seconds=10)
    assert not Session.claim(starting.pk, host=OTHER_HOST, lease_seconds=10)
    starting.refresh_from_db()
    assert starting.host == HOST
    assert starting.lease_expires_at > timezone.now()


def test_only_the_claiming_host_makes_it_active(starting):
    Session.claim(starting.pk, host=HOST, lease_seconds=10)

    assert not Session.activate(starting.pk, host=OTHER_HOST)
    assert Session.activate(starting.pk, host=HOST)
    assert status(starting) == SessionStatus.ACTIVE


def test_an_unclaimed_session_cannot_be_made_active(starting):
    with pytest.raises(ValueError):
        Session.activate(starting.pk, host="")
    assert status(starting) == SessionStatus.STARTING


def test_pause_and_resume_go_between_active_and_paused_only(starting):
    Session.claim(starting.pk, host=HOST, lease_seconds=10)
    assert not Session.mark_paused(starting.pk, host=HOST)  # starting: nothing to pause
    Session.activate(starting.pk, host=HOST)

    assert Session.mark_paused(starting.pk, host=HOST)
    assert status(starting) == SessionStatus.PAUSED
    assert not Session.mark_paused(starting.pk, host=HOST)
    assert Session.mark_resumed(starting.pk, host=HOST)
    assert status(starting) == SessionStatus.ACTIVE


def test_only_its_host_records_that_it_stopped_and_the_host_lets_go(starting):
    Session.claim(starting.pk, host=HOST, lease_seconds=10)
    Session.activate(starting.pk, host=HOST)

    assert not Session.mark_stopped(starting.pk, host=OTHER_HOST)
    assert Session.mark_stopped(starting.pk, host=HOST)
    starting.refresh_from_db()
    assert starting.status == SessionStatus.STOPPED
    assert starting.host == ""
    assert starting.lease_expires_at is None
    assert starting.stopped_at is not None
    assert not Session.mark_stopped(starting.pk, host=HOST)  # ended: stays as it is


def test_a_start_no_host_took_is_stopped_at_once_but_a_claimed_one_is_not(starting, owner):
    assert Session.stop_unclaimed(starting.pk)
    assert status(starting) == SessionStatus.STOPPED

    claimed = new_session(owner)
    Session.claim(claimed.pk, host=HOST, lease_seconds=10)
    assert not Session.stop_unclaimed(claimed.pk)
    assert status(claimed) == SessionStatus.STARTING


def test_an_ended_session_starts_again_and_only_an_ended_one(starting):
    Session.claim(starting.pk, host=HOST, lease_seconds=10)
    assert not Session.request_start(starting.pk)  # starting already
    Session.fail(starting.pk, "its sandbox exited", host=HOST)
    starting.refresh_from_db()
    assert starting.error == "its sandbox exited"

    assert Session.request_start(starting.pk)
    starting.refresh_from_db()
    assert starting.status == SessionStatus.STARTING
    assert starting.error == ""
    assert starting.host == ""
    assert starting.stopped_at is None
    assert Session.claim(starting.pk, host=OTHER_HOST, lease_seconds=10)


def test_a_session_being_deleted_is_neither_claimed_nor_started_again(starting):
    assert Session.mark_deleting(starting.pk)
    assert not Session.mark_deleting(starting.pk)

    assert not Session.claim(starting.pk, host=HOST, lease_seconds=10)
    Session.stop_unclaimed(starting.pk)
    assert not Session.request_start(starting.pk)
    assert not Session.objects.visible().filter(pk=starting.pk).exists()


def test_a_lost_session_fails_only_while_its_lease_is_still_expired(starting):
    Session.claim(starting.pk, host=HOST, lease_seconds=10)
    judged_at = timezone.now()

    # Renewed after the moment judged by: the host is alive.
    assert not Session.fail(starting.pk, "its host stopped", expired_by=judged_at)
    assert status(starting) == SessionStatus.STARTING

    later = judged_at + timedelta(seconds=60)
    assert Session.fail(starting.pk, "its host stopped", expired_by=later)
    assert status(starting) == SessionStatus.FAILED


def test_leases_are_renewed_only_for_the_sessions_the_host_holds(owner):
    mine, theirs, ended = new_session(owner), new_session(owner), new_session(owner)
    Session.claim(mine.pk, host=HOST, lease_seconds=1)
    Session.claim(theirs.pk, host=OTHER_HOST, lease_seconds=1)
    Session.claim(ended.pk, host=HOST, lease_seconds=1)
    Session.fail(ended.pk, "gone", host=HOST)

    renewed = Session.renew_leases(
        [str(mine.pk), str(theirs.pk), str(ended.pk)], host=HOST, lease_seconds=60
    )

    assert renewed == {str(mine.pk)}
    mine.refresh_from_db()
    assert mine.lease_expires_at > timezone.now() + timedelta(seconds=30)


def test_use_is_recorded_at_most_once_per_interval(starting):
    Session.objects.filter(pk=starting.pk).update(
        last_active_at=timezone.now() - timedelta(minutes=1)
    )

    assert Session.touch(starting.pk, unless_since=timedelta(seconds=5))
    assert not Session.touch(starting.pk, unless_since=timedelta(seconds=5))


def test_a_workspace_is_marked_deleted_only_for_a_session_ended_before_the_cutoff(starting):
    Session.stop_unclaimed(starting.pk)
    cutoff = timezone.now() - timedelta(hours=1)
    assert not Session.mark_workspace_deleted(starting.pk, stopped_before=cutoff)

    assert Session.mark_workspace_deleted(starting.pk, stopped_before=timezone.now())
    starting.refresh_from_db()
    assert starting.workspace_deleted
    assert Session.activate(starting.pk, host=HOST) is False
