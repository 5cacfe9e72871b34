"""WebSockets of executions: one run's events, and the user feed (DESIGN §5, §7).

Who may connect, and the close codes of a refusal, are `accounts.websocket`'s.

`/ws/executions/<id>/?after=<seq>` — the run's events after `after` (default 0), then live,
as the SSE stream has them: the same `seq`, one message per event, each the whole event
`{seq, type, data, timestamp, execution_id}`. The consumer joins `execution.<id>` before it
reads the log, so nothing published in between is lost; live messages at or below the last
`seq` sent are dropped, and a skipped number (the channel layer drops messages when a
client's buffer is full) or AIMOS_SSE_HEARTBEAT_SECONDS without any live message makes it
read the log again. After the terminal event (`run_completed`, `run_failed`,
`run_cancelled`, `run_timed_out`) the server closes the socket with 1000: that event holds
the final state (output, metrics or error) for the dashboard to render, and a normal closure
tells the client not to reconnect. A run that ended at or before `after` closes with 1000 at
once, after sending nothing.

`/ws/events/` — the user feed (`aimos.feed`): `{type, data, timestamp}` messages of the
user's agents, builds and executions, and the periodic `metrics_update`. The client sends
nothing; anything it sends is ignored.

`/api/ws/<user_id>` — the reference platforms' path of the feed: the same feed when
`user_id` is the authenticated user's id (or username), else closed with 4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.websocket import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    AuthenticatedConsumer,
    query_params,
)
from aimos import feed
from core.errors import NotFound
from executions import services
from executions.choices import TERMINAL_EVENTS
from executions.models import Execution, ExecutionEvent

logger = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset(TERMINAL_EVENTS.values())
CLOSE_NORMAL = 1000
REPLAY_CHUNK = 1000
# The channel layer forgets a group membership after a day (channels-redis `group_expiry`);
# a feed socket left open longer renews its memberships this often.
GROUP_RENEW_SECONDS = 3600


@database_sync_to_async
def _accessible_execution_id(user, execution_id):
    """The id of the execution if `user` may see it, else None."""
    try:
        return services.access_execution(user, execution_id).pk
    except NotFound:
        return None


@database_sync_to_async
def _read_log(execution_id, after: int) -> tuple[bool, list[dict]]:
    """(whether the run had ended, its next events after `after`). The status is read first:
    a run's terminal status and its terminal event commit together, so when it had ended,
    the events read next include the terminal one."""
    ended = Execution.objects.filter(pk=execution_id, status__in=TERMINAL_EVENTS.keys()).exists()
    events = ExecutionEvent.objects.filter(execution_id=execution_id, seq__gt=after).order_by("seq")
    return ended, [event.as_message() for event in events[:REPLAY_CHUNK]]


class ExecutionConsumer(AuthenticatedConsumer):
    """The events of one execution, from the log then live, each `seq` exactly once."""

    execution_id = None
    group = None
    last = 0
    done = False

    async def open(self) -> None:
        try:
            after = int(query_params(self.scope).get("after") or 0)
        except ValueError:
            await self.refuse(CLOSE_BAD_REQUEST)
            return
        requested = self.scope["url_route"]["kwargs"]["execution_id"]
        self.execution_id = await _accessible_execution_id(self.user, requested)
        if self.execution_id is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.last = max(0, after)
        self.lock = asyncio.Lock()
        self.heard_at = time.monotonic()
        # Subscribe before reading the log, so nothing published in between is missed.
        self.group = f"execution.{self.execution_id}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.admit()
        async with self.lock:
            await self._catch_up()
        if not self.done:
            self.watchdog = asyncio.create_task(self._watch())

    async def execution_events(self, message) -> None:
        """A batch of live events from `services.publish`."""
        self.heard_at = time.monotonic()
        async with self.lock:
            for event in message["events"]:
                if self.done:
                    return
                if event["seq"] <= self.last:
                    continue
                if event["seq"] != self.last + 1:
                    await self._catch_up()  # a message was lost: the log has it
                    return
                await self._send_event(event)

    async def _catch_up(self) -> None:
        """Send what the log holds after the last `seq` sent (caller holds the lock)."""
        while not self.done:
            ended, events = await _read_log(self.execution_id, self.last)
            for event in events:
                await self._send_event(event)
                if self.done:
                    return
            if len(events) < REPLAY_CHUNK:
                if ended:
                    await self._end()  # its terminal event was at or before `after`
                return

    async def _send_event(self, event: dict) -> None:
        await self.send_json(event)
        self.last = event["seq"]
        if event["type"] in TERMINAL_TYPES:
            await self._end()

    async def _end(self) -> None:
        self.done = True
        await self._leave()
        await self.close(CLOSE_NORMAL)

    async def _watch(self) -> None:
        """Read the log again whenever no live message came for a while: the channel layer
        may have dropped the last ones, which no later number would reveal."""
        interval = settings.AIMOS_SSE_HEARTBEAT_SECONDS
        while not self.done:
            await asyncio.sleep(interval)
            if time.monotonic() - self.heard_at >= interval:
                try:
                    async with self.lock:
                        await self._catch_up()
                except Exception:  # e.g. the database restarting: try again next time
                    logger.exception("catching up execution %s failed", self.execution_id)

    async def _leave(self) -> None:
        if self.group is not None:
            group, self.group = self.group, None
            await self.channel_layer.group_discard(group, self.channel_name)

    async def disconnect(self, code) -> None:
        self.done = True
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None and watchdog is not asyncio.current_task():
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await self._leave()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        pass  # the stream is one-way


class FeedConsumer(AuthenticatedConsumer):
    """The user feed: the user's group and the metrics group."""

    groups_joined: tuple[str, ...] = ()
    renewal = None

    async def open(self) -> None:
        self.groups_joined = (feed.user_group(self.user.pk), feed.METRICS_GROUP)
        await self._join()
        await self.admit()
        self.renewal = asyncio.create_task(self._renew())

    async def _join(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(GROUP_RENEW_SECONDS)
            try:
                await self._join()
            except Exception:  # Redis restarting: try again next time
                logger.exception("renewing the feed groups failed")

    async def feed_message(self, message) -> None:
        await self.send_json(message["message"])

    async def disconnect(self, code) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.renewal
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = ()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        pass  # the feed is one-way


class CompatFeedConsumer(FeedConsumer):
    """`/api/ws/<user_id>`: the feed of the authenticated user, named by id or username."""

    async def open(self) -> None:
        if not self._names_user(self.scope["url_route"]["kwargs"]["user_id"]):
            await self.refuse(CLOSE_FORBIDDEN)
            return
        await super().open()

    def _names_user(self, ref: str) -> bool:
        try:
            return uuid.UUID(ref) == self.user.pk
        except ValueError:
            return ref == self.user.get_username()
