"""Waiting for a run to change, woken by a message rather than by polling its row.

A request that waits for a run (execute with `wait`, chat and the compatible synchronous
routes, pause, resume and cancel waiting for the worker) blocks on the Redis channel
`aimos:run:<id>`, and whoever changes the run in a way a waiter cares about (it ends, it is
paused or resumed) calls `announce`, which publishes once the change is committed. The
message carries nothing: the row stays the one record, and the waiter reads it again.

Pub/sub delivers at most once (a publish can fail, a connection can drop), so a waiter also
reads the row every RECHECK_SECONDS: a lost message costs at most that delay, never the
answer. Channels are server-wide in Redis (not per database), which is harmless here since
each run's id is unique.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

import django_rq
from django.db import connection, transaction
from redis.exceptions import RedisError

from executions.models import Execution

logger = logging.getLogger(__name__)

CHANNEL = "aimos:run:{}"

# How often a waiter reads the row without being told to: the most a lost message delays it.
RECHECK_SECONDS = 1.0


def announce(execution_id) -> None:
    """Wake the waiters of this run once the current transaction commits (at once outside
    one; never if it rolls back). Best effort: a Redis error is logged, not raised, and the
    waiters see the change at their next re-read."""
    transaction.on_commit(lambda: _publish(execution_id))


def _publish(execution_id) -> None:
    connection = django_rq.get_connection("runs")
    try:
        connection.publish(CHANNEL.format(execution_id), "")
    except RedisError:
        logger.warning("could not announce a change of execution %s", execution_id, exc_info=True)
    finally:
        connection.close()


def wait_until(
    execution: Execution, done: Callable[[Execution], bool], seconds: float
) -> Execution:
    """The execution, read again, once `done(execution)` holds, or as it is after `seconds`.

    The waiter subscribes before its first read: a change committed after that read is
    announced to it. It reads the row again on each message and every RECHECK_SECONDS."""
    if seconds <= 0:
        execution.refresh_from_db()
        return execution
    deadline = time.monotonic() + seconds
    with _Announcements(execution.pk) as announcements:
        for waited in itertools.count():
            execution.refresh_from_db()
            left = deadline - time.monotonic()
            if done(execution) or left <= 0:
                return execution
            if waited and not connection.in_atomic_block:
                # A long wait holds no database connection: a hundred waiting requests must
                # not take a hundred of the server's connections.
                connection.close()
            announcements.wait(min(left, RECHECK_SECONDS))


class _Announcements:
    """The subscription of one waiter to one run's channel, closed on exit.

    Without Redis (it cannot subscribe, or the connection breaks) the waiter still sees the
    change, at its next re-read."""

    def __init__(self, execution_id) -> None:
        self.execution_id = execution_id
        self.connection = django_rq.get_connection("runs")
        self.pubsub = self.connection.pubsub()

    def __enter__(self) -> _Announcements:
        try:
            self.pubsub.subscribe(CHANNEL.format(self.execution_id))
            # The server's confirmation: from here on every announcement reaches this waiter.
            self.pubsub.get_message(timeout=RECHECK_SECONDS)
        except RedisError:
            self._lose()
        return self

    def wait(self, seconds: float) -> None:
        """Until an announcement comes or `seconds` have passed."""
        if self.pubsub is not None:
            try:
                self.pubsub.get_message(timeout=seconds)
                return
            except RedisError:
                self._lose()
        time.sleep(seconds)

    def _lose(self) -> None:
        logger.warning(
            "waiting for execution %s without announcements", self.execution_id, exc_info=True
        )
        self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
            self.connection.close()

    def __exit__(self, *exc_info) -> None:
        self.close()
