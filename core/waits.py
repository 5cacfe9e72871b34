"""Waiting for a row to change, woken by a message rather than by polling it.

A request that waits for a row (a run to end, a session to start) blocks on a Redis channel
of that row, and whoever changes the row in a way a waiter cares about calls `announce`,
which publishes once the change is committed. The message carries nothing: the
row stays the one record, and the waiter reads it again.

Pub/sub delivers at most once (a publish can fail, a connection can drop), so a waiter also
reads the row every RECHECK_SECONDS: a lost message costs at most that delay, never the
answer. Channels are server-wide in Redis (not per database), which is harmless here since
each row's id is unique.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import django_rq
from django.db import connection, transaction
from django.db.models import Model
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# How often a waiter reads the row without being told to: the most a lost message delays it.
RECHECK_SECONDS = 1.0

M = TypeVar("M", bound=Model)


class RowWaits:
    """Announcements of and waits for the rows of one kind (`kind`, as logs name them), on
    `channel` (a format of the row's pk) through the Redis connection of `queue` (one of
    `RQ_QUEUES`)."""

    def __init__(self, kind: str, channel: str, queue: str) -> None:
        self.kind = kind
        self.channel = channel
        self.queue = queue

    def channel_of(self, pk) -> str:
        return self.channel.format(pk)

    def announce(self, pk) -> None:
        """Wake the waiters of this row once the current transaction commits (at once outside
        one; never if it rolls back). Best effort: a Redis error is logged, not raised, and
        the waiters see the change at their next re-read."""
        transaction.on_commit(lambda: self._publish(pk))

    def _publish(self, pk) -> None:
        redis = django_rq.get_connection(self.queue)
        try:
            redis.publish(self.channel_of(pk), "")
        except RedisError:
            logger.warning("could not announce a change of %s %s", self.kind, pk, exc_info=True)
        finally:
            redis.close()

    def wait_until(self, row: M, done: Callable[[M], bool], seconds: float) -> M | None:
        """The row, read again, once `done(row)` holds, or as it is after `seconds`; None once
        it is gone (deleted).

        The waiter subscribes before its first read: a change committed after that read is
        announced to it. It reads the row again on each message and every RECHECK_SECONDS,
        and holds no database connection while it waits (a hundred waiting requests must not
        take a hundred of the server's connections)."""
        if seconds <= 0:
            return _read(row)
        deadline = time.monotonic() + seconds
        with _Announcements(self, row.pk) as announcements:
            for waited in itertools.count():
                if _read(row) is None:
                    return None
                left = deadline - time.monotonic()
                if done(row) or left <= 0:
                    return row
                if waited and not connection.in_atomic_block:
                    connection.close()
                announcements.wait(min(left, RECHECK_SECONDS))
        return row


def _read(row: M) -> M | None:
    try:
        row.refresh_from_db()
    except type(row).DoesNotExist:
        return None
    return row


class _Announcements:
    """The subscription of one waiter to one row's channel, closed on exit. Without Redis (it
    cannot subscribe, or the connection breaks) the waiter still sees the change, at its next
    re-read."""

    def __init__(self, waits: RowWaits, pk) -> None:
        self.waits = waits
        self.pk = pk
        self.redis = django_rq.get_connection(waits.queue)
        self.pubsub = self.redis.pubsub()

    def __enter__(self) -> _Announcements:
        try:
            self.pubsub.subscribe(self.waits.channel_of(self.pk))
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
            "waiting for %s %s without announcements", self.waits.kind, self.pk, exc_info=True
        )
        self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
            self.redis.close()

    def __exit__(self, *exc_info) -> None:
        self.close()
