"""Waiting for a session to change (`core.waits`): a request that waits for a session (create
and start waiting for it to be active, pause, resume, stop and delete waiting for its host)
blocks on `aimos:session:<id>`, and whoever changes the session (its host, the upkeep, the
services) calls `announce`. A waiter gets None once the session is gone (deleted)."""

from __future__ import annotations

from core.waits import RowWaits

SESSIONS = RowWaits("session", "aimos:session:{}", "default")
announce = SESSIONS.announce
wait_until = SESSIONS.wait_until
