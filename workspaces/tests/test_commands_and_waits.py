"""What the session hosts are told (Redis lists of JSON commands), and requests waiting for a
session to change (woken through Redis pub/sub)."""

import threading

import django_rq
import pytest
from django.db import connection, transaction

from core import waits as core_waits
from workspaces import commands
from workspaces.models import Session
from workspaces.tests.daemons import TEST_HOST, activate, new_session
from workspaces.waits import announce, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HOUR = 3600.0


@pytest.fixture
def redis():
    connection = django_rq.get_connection("default")
    keys = [commands.SHARED, commands.OWN.format(TEST_HOST)]
    connection.delete(*keys)
    yield connection
    connection.delete(*keys)


def test_a_command_reaches_a_host_once(redis):
    commands.send(commands.START, "6f1c1b9e-0b59-4f0e-9d3a-6f6f0c1d2e3f")

    command = commands.receive(redis, TEST_HOST, 1)

    assert command == commands.Command("start", "6f1c1b9e-0b59-4f0e-9d3a-6f6f0c1d2e3f")
    assert commands.receive(redis, "another:1", 0.01) is None


def test_a_host_reads_its_own_list_before_the_shared_one(redis):
    commands.send(commands.START, "00000000-0000-0000-0000-000000000001")
    commands.send(commands.STOP, "00000000-0000-0000-0000-000000000002", host=TEST_HOST)

    first = commands.receive(redis, TEST_HOST, 1)
    second = commands.receive(redis, TEST_HOST, 1)

    assert (first.op, second.op) == ("stop", "start")
    assert redis.ttl(commands.OWN.format(TEST_HOST)) == -2  # emptied, so gone


@pytest.mark.parametrize(
    "message",
    [
        b"not json",
        b"[]",
        b'{"op": "start"}',
        b'{"op": "reboot", "id": "x"}',
        b'{"op": "stop", "id": "1"}',
    ],
)
def test_a_message_that_is_not_a_command_is_dropped(redis, message):
    redis.rpush(commands.SHARED, message)

    assert commands.receive(redis, TEST_HOST, 1) is None
    assert redis.llen(commands.SHARED) == 0


def test_an_unknown_command_is_never_sent():
    with pytest.raises(ValueError):
        commands.send("reboot", "00000000-0000-0000-0000-000000000001")


def test_nothing_is_sent_when_the_transaction_rolls_back(redis):
    with pytest.raises(RuntimeError), transaction.atomic():
        commands.send(commands.START, "00000000-0000-0000-0000-000000000001")
        raise RuntimeError("rolled back")

    assert redis.llen(commands.SHARED) == 0


def test_a_waiter_is_woken_by_the_change_its_host_announces(owner, monkeypatch):
    monkeypatch.setattr(core_waits, "RECHECK_SECONDS", HOUR)  # only the announcement can wake it
    session = new_session(owner)
    first_read = threading.Event()

    def active(current: Session) -> bool:
        first_read.set()  # subscribed, and read as it was: what follows must be announced
        return current.status == "active"

    def host_side():
        try:
            assert first_read.wait(30)
            activate(Session.objects.get(pk=session.pk))
            announce(session.pk)
        finally:
            connection.close()

    host = threading.Thread(target=host_side)
    host.start()
    seen = {}

    def wait() -> None:
        try:
            seen["session"] = wait_until(session, active, HOUR)
        finally:
            connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    waiter.join(60)  # an hour without the announcement
    host.join(30)

    assert not waiter.is_alive(), "the announcement did not wake the waiter"
    assert seen["session"].status == "active"


def test_a_waiter_for_a_session_that_is_deleted_gets_none(owner):
    session = new_session(owner)

    def host_side():
        Session.objects.filter(pk=session.pk).delete()
        announce(session.pk)

    thread = threading.Thread(target=host_side)
    thread.start()
    seen = wait_until(session, lambda s: False, 30)
    thread.join(30)

    assert seen is None


def test_a_waiter_answers_as_the_session_is_after_its_time(owner):
    session = new_session(owner)

    assert wait_until(session, lambda s: False, 0).status == "starting"
