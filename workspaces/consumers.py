"""The WebSocket of a session: `/ws/sessions/<id>/`, and `/ws/<session_id>` for the Crogia
reference's clients (the same consumer).

Who may connect, and the close codes of a refusal, are `accounts.websocket`'s: a session that
does not exist for the user (another user's, one being deleted, an unknown id) closes with
4404 before anything is sent.

Every message is `{type, data, timestamp}` (`workspaces.live`):

- `session_status` `{session_id, status, error}`: first the session as it is, then each time it
  changes (read again whenever it is announced, `workspaces.waits`); `status: "deleted"` when
  it is gone, and the server closes with 1000.
- the task events of the reference — `task_started`, `text_delta`, `tool_call`,
  `tool_complete`, `task_completed`, `error` — from the live events of the session's task runs,
  each with `execution_id` in `data` (live only: a run's whole log is its own stream,
  `/ws/executions/<id>/`, or its events API);
- `file_changed` `{path, change, execution_id?}`;
- `process_output` `{pid, data}` and then `process_exited` `{pid, status, exit_code, …}` for a
  background process this socket follows: the client sends `{"action": "follow", "pid": N}`
  (and `"tail"`: the lines of its log to send first, default 200), and `{"action":
  "unfollow", "pid": N}` to stop. The log is relayed from the session's daemon by a thread of
  its own (`workspaces.streams.relay`), never blocking the event loop. A refusal (no such
  process, a session not active, a bad message) is an `error` `{message, code, pid?}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections

from accounts.websocket import CLOSE_NOT_FOUND, AuthenticatedConsumer
from core.errors import NotFound, ServiceError
from executions.consumers import CLOSE_NORMAL, GROUP_RENEW_SECONDS
from executions.events import session_group
from workspaces import live, operations, services
from workspaces.models import Session
from workspaces.streams import relay
from workspaces.waits import SESSIONS

logger = logging.getLogger(__name__)

# How often the session is read again without being told it changed (a lost announcement).
STATUS_RECHECK_SECONDS = 30.0
# Processes one socket may follow at once.
MAX_FOLLOWS = 16
DEFAULT_TAIL = 200
MAX_MESSAGE_CHARS = 4096


def _off_loop(function):
    """`function` run in a thread of its own (a daemon call may take seconds; the shared sync
    thread must not wait for it), the database connections it opened closed after."""

    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return sync_to_async(call, thread_sensitive=False)


@database_sync_to_async
def _accessible_session(user, session_id) -> Session | None:
    try:
        return services.access_session(user, session_id)
    except NotFound:
        return None


@database_sync_to_async
def _current(session_id) -> tuple[str, str] | None:
    """(status, error) of the session, None once it is gone (or being deleted)."""
    found = Session.objects.visible().filter(pk=session_id).values_list("status", "error")
    return found.first()


def _status_message(session_id, state: tuple[str, str] | None) -> dict:
    status, error = state if state is not None else ("deleted", "")
    return live.message(
        "session_status", {"session_id": str(session_id), "status": status, "error": error}
    )


def _follow_events(user, session_id, pid: int, tail: int):
    """The events of a followed log (`operations.follow_logs`), the session read again now."""
    session = services.access_session(user, session_id)
    return operations.follow_logs(session, pid, tail=tail)


class SessionConsumer(AuthenticatedConsumer):
    """One session's live messages (see the module docstring)."""

    session_id = None
    group = None
    watcher = None

    async def open(self) -> None:
        requested = self.scope["url_route"]["kwargs"]["session_id"]
        session = await _accessible_session(self.user, requested)
        if session is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.session_id = session.pk
        self.follows: dict[int, asyncio.Task] = {}
        self.group = session_group(session.pk)
        # Joined before anything is read, so nothing published in between is missed.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.admit()
        self.state = (session.status, session.error)
        await self.send_json(_status_message(self.session_id, self.state))
        self.watcher = asyncio.create_task(self._watch())

    # --- messages of the group -------------------------------------------------------------

    async def session_message(self, event) -> None:
        await self.send_json(event["message"])

    async def session_task_events(self, event) -> None:
        for run_event in event["events"]:
            for message in live.task_messages(run_event):
                await self.send_json(message)

    # --- the session's status ----------------------------------------------------------------

    async def _watch(self) -> None:
        """Sends `session_status` whenever the session changes: read again on each
        announcement of it and every STATUS_RECHECK_SECONDS; renews the group membership."""
        renew_at = time.monotonic() + GROUP_RENEW_SECONDS
        while True:
            client = aioredis.from_url(settings.RQ_QUEUES["default"]["URL"])
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(SESSIONS.channel_of(self.session_id))
                    while True:
                        if not await self._send_status_if_changed():
                            return
                        if time.monotonic() >= renew_at:
                            await self.channel_layer.group_add(self.group, self.channel_name)
                            renew_at = time.monotonic() + GROUP_RENEW_SECONDS
                        await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=STATUS_RECHECK_SECONDS
                        )
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis or the database restarting: try again in a while
                logger.exception("watching session %s failed", self.session_id)
                await asyncio.sleep(STATUS_RECHECK_SECONDS / 10)
            finally:
                await client.aclose()

    async def _send_status_if_changed(self) -> bool:
        """False once the session is gone (the socket is then closed)."""
        state = await _current(self.session_id)
        if state != self.state:
            self.state = state
            await self.send_json(_status_message(self.session_id, state))
        if state is None:
            await self.close(CLOSE_NORMAL)
            return False
        return True

    # --- what the client asks ----------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None) -> None:
        try:
            content = json.loads(text_data or "")
        except ValueError:
            content = None
        if not isinstance(content, dict) or len(text_data) > MAX_MESSAGE_CHARS:
            await self._error('Send a JSON object such as {"action": "follow", "pid": 1}')
            return
        action, pid = content.get("action"), content.get("pid")
        if action not in ("follow", "unfollow"):
            await self._error(f"Unknown action {str(action)[:64]!r}: follow or unfollow")
            return
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            await self._error("`pid` must be a process id (a positive integer)")
            return
        if action == "unfollow":
            await self._unfollow(pid)
            return
        tail = content.get("tail", DEFAULT_TAIL)
        if isinstance(tail, bool) or not isinstance(tail, int) or not 0 <= tail <= 10_000:
            await self._error("`tail` must be an integer from 0 to 10000", pid=pid)
            return
        self.follows = {p: task for p, task in self.follows.items() if not task.done()}
        if pid in self.follows:
            return  # already followed
        if len(self.follows) >= MAX_FOLLOWS:
            await self._error(f"At most {MAX_FOLLOWS} processes are followed at once", pid=pid)
            return
        self.follows[pid] = asyncio.create_task(self._follow(pid, tail))

    async def _follow(self, pid: int, tail: int) -> None:
        """Relays the process's log as `process_output`, then `process_exited`."""
        try:
            events = await _off_loop(_follow_events)(self.user, self.session_id, pid, tail)
            async for kind, data in relay(events, None):
                if kind == "log":
                    await self.send_json(
                        live.message("process_output", {"pid": pid, "data": data.get("data", "")})
                    )
                elif kind == "end":
                    await self.send_json(live.message("process_exited", {**data, "pid": pid}))
                elif kind == "error":
                    await self._error(data.get("detail", ""), code=data.get("code"), pid=pid)
        except ServiceError as exc:
            await self._error(str(exc.detail), code=exc.code, pid=pid)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following process %s of session %s failed", pid, self.session_id)
            await self._error("Following the process failed", code="server_error", pid=pid)

    async def _unfollow(self, pid: int) -> None:
        task = self.follows.pop(pid, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _error(self, text: str, *, code: str | None = "invalid_request", pid=None) -> None:
        data = {"message": text, "code": code}
        if pid is not None:
            data["pid"] = pid
        await self.send_json(live.message("error", data))

    async def disconnect(self, code) -> None:
        tasks = [*getattr(self, "follows", {}).values()]
        if self.watcher is not None and self.watcher is not asyncio.current_task():
            tasks.append(self.watcher)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
