"""What the session hosts are told to do, through Redis lists of JSON `{op, id}`.

A start goes to the list every session host waits on (`aimos:sessions:commands`): whichever
takes it claims the session (`Session.claim`), so one host starts it. What concerns a session
a host already holds (stop, delete, pause, resume) goes to that host's own list
(`aimos:sessions:commands:<host>`), which it waits on first; a delete of a session no host
holds goes to the shared list. Commands are sent once the transaction that recorded the wish
commits, and a host re-reads the row before acting, so a stale or repeated command does
nothing. A lost command costs nothing either: a start nobody took ends `failed` by the upkeep
(`workspaces.recovery`), a lost stop leaves the session running until its idle timeout, a
lost pause or resume leaves it as it was (the request that asked says so), and a lost delete
is finished by the upkeep.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

import django_rq
from django.db import transaction

logger = logging.getLogger(__name__)

SHARED = "aimos:sessions:commands"
OWN = "aimos:sessions:commands:{}"
START, STOP, DELETE, PAUSE, RESUME = "start", "stop", "delete", "pause", "resume"
OPS = (START, STOP, DELETE, PAUSE, RESUME)
# A host's own list outlives it by this long at most (a host that died reads it no more).
OWN_LIST_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Command:
    op: str
    session_id: str


def send(op: str, session_id, *, host: str = "") -> None:
    """Tell the session hosts (`host`'s own list when it holds the session) once the current
    transaction commits."""
    if op not in OPS:
        raise ValueError(f"unknown session command {op!r}")
    message = json.dumps({"op": op, "id": str(session_id)})
    key = OWN.format(host) if host else SHARED

    def push() -> None:
        redis = django_rq.get_connection("default")
        try:
            redis.rpush(key, message)
            if host:
                redis.expire(key, OWN_LIST_TTL_SECONDS)
        finally:
            redis.close()

    transaction.on_commit(push)


def receive(redis, host: str, timeout: float) -> Command | None:
    """The next command for `host` (its own list first, then the shared one), waiting up to
    `timeout` seconds; None when none came or the message is not a command (logged)."""
    message = redis.blpop([OWN.format(host), SHARED], timeout=timeout)
    if not message:
        return None
    try:
        data = json.loads(message[1])
        op, session_id = data["op"], str(uuid.UUID(str(data["id"])))
        if op not in OPS:
            raise ValueError(op)
    except (ValueError, TypeError, KeyError):
        logger.warning("ignoring a malformed session command: %r", message[1][:200])
        return None
    return Command(op, session_id)
