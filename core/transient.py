"""Riding out a database or Redis that went away for a moment (a restart, a terminated
connection): the call is tried again on a fresh connection until a deadline, then the error
is raised. Only for calls that are safe to repeat and run outside any transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")


def reconnect() -> None:
    """Drop this thread's database connection (Django opens a new one on next use)."""
    if not connection.in_atomic_block:
        connection.close()


def retrying(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """`call()`, tried again on a transient error until `seconds` have passed."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return call()
        except TRANSIENT_ERRORS as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (%s); trying again", what, exc)
            reconnect()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
