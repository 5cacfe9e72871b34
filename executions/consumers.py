"""WebSockets of executions: one run's events, and the user feed (DESIGN §5, §7).

Who may connect, and the close codes of a refusal, are `accounts.websocket`'s.

`/ws/executions/<id>/?after=<seq>` — the run's events after `after` (default 0), then live,
as the SSE stream has them: the same `seq`, one message per event, each the whole event
`{seq, type, data, timestamp, execution_id}`, read by `executions.events.RunStream` (the SSE
stream's reader too). It joins `execution.<id>` before it reads the log, so nothing
published in between is lost; live messages at or below the last
`seq` sent are dropped, and a skipped number (the channel layer drops messages when a
client's buffer is full) or AIMOS_SSE_HEARTBEAT_SECONDS without any live message makes it
read the log again. After the terminal event (`run_completed`, `run_failed`,
`run_cancelled`, `run_timed_out`) the server closes the socket with 1000: that event holds
the final state (output, metrics or error) for the dashboard to render, and a normal closure
tells the client not to reconnect. A run that ended at or before `after` closes with 1000 at
once, after sending nothing.

`/ws/events/` — the user feed (`notifications.feed`): `{type, data, timestamp}` messages of the
user's agents, builds and executions, and the periodic `metrics_update`. The client sends
nothing; anything it sends is ignored.

`/api/ws/<user_id>` — the reference platforms' path of the feed: the same feed when
`user_id` is the authenticated user's id (or username), else closed with 4403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from channels.db import database_sync_to_async

from accounts.websocket import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    AuthenticatedConsumer,
    query_params,
)
from core.errors import NotFound
from executions import services
from executions.events import RunStream
from notifications import feed

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_SERVER_ERROR = 1011
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


class ExecutionConsumer(AuthenticatedConsumer):
    """The events of one execution, from the log then live, each `seq` exactly once
    (`RunStream`), closed with 1000 after the terminal event."""

    stream = None
    relay = None

    async def open(self) -> None:
        try:
            after = int(query_params(self.scope).get("after") or 0)
        except ValueError:
            await self.refuse(CLOSE_BAD_REQUEST)
            return
        requested = self.scope["url_route"]["kwargs"]["execution_id"]
        execution_id = await _accessible_execution_id(self.user, requested)
        if execution_id is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.stream = RunStream(execution_id, after, layer=self.channel_layer)
        # Subscribe before reading the log, so nothing published in between is missed.
        await self.stream.subscribe()
        await self.admit()
        self.relay = asyncio.create_task(self._relay())

    async def _relay(self) -> None:
        try:
            async for event in self.stream:
                if event is not None:  # None: a quiet spell, nothing to send
                    await self.send_json(event)
        except Exception:  # e.g. the database gone while replaying: the client reconnects
            logger.exception("streaming execution %s failed", self.stream.execution_id)
            await self.stream.close()
            await self.close(CLOSE_SERVER_ERROR)
            return
        await self.stream.close()
        await self.close(CLOSE_NORMAL)

    async def disconnect(self, code) -> None:
        relay = self.relay
        if relay is not None and relay is not asyncio.current_task():
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        if self.stream is not None:
            await self.stream.close()

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
