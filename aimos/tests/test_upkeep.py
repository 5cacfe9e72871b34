"""Upkeep runs in a process of its own, one pass per interval across the whole platform."""

import threading

import django_rq
import pytest

from aimos import upkeep


@pytest.fixture
def connection():
    redis = django_rq.get_connection("default")
    redis.delete(upkeep.LOCK_KEY)
    yield redis
    redis.delete(upkeep.LOCK_KEY)


def test_one_process_makes_the_pass_of_an_interval(connection):
    assert upkeep.take_turn(connection, 30)
    assert not upkeep.take_turn(connection, 30)
    assert 0 < connection.pttl(upkeep.LOCK_KEY) <= 27_000


@pytest.mark.django_db(transaction=True)
def test_a_pass_reports_what_it_did(connection):
    done = upkeep.upkeep_pass()
    assert done["stale_builds"] == 0
    assert {"lost", "requeued", "pending_requeued", "metrics_sample"} <= set(done)


@pytest.mark.django_db(transaction=True)
def test_run_passes_until_stopped(connection):
    stop = threading.Event()
    thread = threading.Thread(target=upkeep.run, args=(stop,))
    thread.start()
    try:
        # The first pass takes the interval's turn at once.
        waiting = threading.Event()
        for _ in range(1000):
            if connection.exists(upkeep.LOCK_KEY):
                break
            waiting.wait(0.01)
        assert connection.exists(upkeep.LOCK_KEY)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
