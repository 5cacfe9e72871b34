"""Waiting for a session to change, woken by a message rather than by polling its row.

A request that waits for a session (create and start waiting for it to be active, stop and
delete waiting for its host) blocks on the Redis channel `aimos:session:<id>`, and whoever
changes the session (its host, the upkeep, the services) calls `announce`, which publishes
once the change is committed. The message carries nothing: the row is the record, and the
waiter reads it again — on each message, and every RECHECK_SECONDS in case one was lost (as
`executions.waits` does for runs).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

import django_rq
from django.db import connection, transaction
from redis.exceptions import RedisError

from workspaces.models import Session

logger = logging.getLogger(__name__)

CHANNEL = "aimos:session:{}"

# How often a waiter reads the row without being told to: the most a lost message delays it.
RECHECK_SECONDS = 1.0


def announce(session_id) -> None:
    """Wake the waiters of this session once the current transaction commits (at once outside
    one; never if it rolls back). Best effort: a Redis error is logged, not raised."""
    transaction.on_commit(lambda: _publish(session_id))


def _publish(session_id) -> None:
    redis = django_rq.get_connection("default")
    try:
        redis.publish(CHANNEL.format(session_id), "")
    except RedisError:
        logger.warning("could not announce a change of session %s", session_id, exc_info=True)
    finally:
        redis.close()


def wait_until(session: Session, done: Callable[[Session], bool], seconds: float) -> Session | None:
    """The session, read again, once `done(session)` holds, or as it is after `seconds`; None
    once its row is gone (deleted). Subscribes before the first read, so a change committed
    after that read is announced to it."""
    if seconds <= 0:
        try:
            session.refresh_from_db()
        except Session.DoesNotExist:
            return None
        return session
    with _Announcements(session.pk) as announcements:
        deadline = time.monotonic() + seconds
        for waited in itertools.count():
            try:
                session.refresh_from_db()
            except Session.DoesNotExist:
                return None
            left = deadline - time.monotonic()
            if done(session) or left <= 0:
                return session
            if waited and not connection.in_atomic_block:
                # A long wait holds no database connection.
                connection.close()
            announcements.wait(min(left, RECHECK_SECONDS))
    return session


class _Announcements:
    """The subscription of one waiter to one session's channel, closed on exit. Without Redis
    the waiter still sees the change, at its next re-read."""

    def __init__(self, session_id) -> None:
        self.session_id = session_id
        self.redis = django_rq.get_connection("default")
        self.pubsub = self.redis.pubsub()

    def __enter__(self) -> _Announcements:
        try:
            self.pubsub.subscribe(CHANNEL.format(self.session_id))
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
        logger.warning("waiting for session %s without announcements", self.session_id)
        self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
            self.redis.close()

    def __exit__(self, *exc_info) -> None:
        self.close()
