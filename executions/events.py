"""The event log of a run: written by `record_events` (numbered without gaps, published to the
channel layer after commit) and read back by `RunStream`, the one reader behind both the SSE
stream (`executions.streams`) and the run's WebSocket (`executions.consumers`).

The events of a task of a session (`Execution.session`) also go, as they are, to the
session's group (`session_group`), whose sockets (`workspaces.consumers`) turn them into the
reference's task events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.live import send_soon
from executions.choices import TERMINAL_EVENTS
from executions.models import Checkpoint, Execution, ExecutionEvent, text_column

logger = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset(TERMINAL_EVENTS.values())
# Events read from the log per query while replaying.
REPLAY_CHUNK = 1000
LABEL_LENGTH = Checkpoint._meta.get_field("label").max_length


def group_name(execution_id) -> str:
    """The channel-layer group that carries the live events of one run."""
    return f"execution.{execution_id}"


def session_group(session_id) -> str:
    """The channel-layer group of one session (`workspaces.live`): its sockets' messages, and
    the events of its task runs (message type `session.task_events`)."""
    return f"session.{session_id}"


def record_events(
    execution_id, items: list[tuple[str, dict]], *, attempt: int | None = None
) -> list[ExecutionEvent]:
    """Append events to the execution's log, numbered `last_seq + 1 …` without gaps, in one
    transaction (checkpoints stored alongside); they are published once it commits. Any JSON
    data is stored intact, U+0000 included (`executions.models.RunJSONField`)."""
    if not items:
        return []
    with transaction.atomic():
        locked = Execution.objects.select_for_update().only(
            "id", "user_id", "last_seq", "session_id"
        )
        if attempt is not None:
            # Fenced: a worker whose attempt was superseded writes nothing.
            execution = locked.filter(pk=execution_id, attempt=attempt).first()
            if execution is None:
                return []
        else:
            execution = locked.get(pk=execution_id)
        seq = execution.last_seq
        now = timezone.now()
        rows, checkpoints = [], []
        for kind, data in items:
            seq += 1
            if kind == "checkpoint":
                checkpoint = Checkpoint(
                    execution_id=execution.pk,
                    seq=seq,
                    # a text column: no U+0000, at most its length
                    label=text_column(str(data.get("label") or ""))[:LABEL_LENGTH],
                    state=data.get("state"),
                )
                checkpoints.append(checkpoint)
                data = {"checkpoint_id": str(checkpoint.pk), "label": checkpoint.label or None}
            rows.append(
                ExecutionEvent(
                    execution_id=execution.pk, seq=seq, type=kind, data=data, timestamp=now
                )
            )
        Checkpoint.objects.bulk_create(checkpoints)
        ExecutionEvent.objects.bulk_create(rows)
        Execution.objects.filter(pk=execution.pk).update(last_seq=seq)
        session_id = execution.session_id
        transaction.on_commit(
            lambda: publish(execution.pk, [row.as_message() for row in rows], session_id=session_id)
        )
    return rows


def publish(execution_id, messages: list[dict], *, session_id=None) -> None:
    """Send events to the channel-layer group of the execution, as one message, in order with
    the ones sent before (`core.live`: one sending thread per process, no loop per message);
    a task's also to its session's group, as one more message.

    Not to the owner's group: the user feed carries lifecycle messages only, and every delta
    there would fill the buffers of feed sockets, which then drop messages.
    """
    if messages:
        send_soon(group_name(execution_id), {"type": "execution.events", "events": messages})
        if session_id is not None:
            send_soon(
                session_group(session_id), {"type": "session.task_events", "events": messages}
            )


def events_after(execution: Execution, after: int = 0, limit: int | None = None):
    events = execution.events.filter(seq__gt=after).order_by("seq")
    return events[:limit] if limit else events


@sync_to_async
def _read_log(execution_id, after: int) -> tuple[bool, list[dict]]:
    """(whether the run had ended, its next events after `after`). The status is read first:
    a run's terminal status and its terminal event commit together, so when it had ended,
    the events read next include the terminal one."""
    ended = Execution.objects.filter(pk=execution_id, status__in=TERMINAL_EVENTS.keys()).exists()
    events = ExecutionEvent.objects.filter(execution_id=execution_id, seq__gt=after).order_by("seq")
    return ended, [event.as_message() for event in events[:REPLAY_CHUNK]]


class RunStream:
    """The events of one run after `after`, in order, each `seq` exactly once, ending after
    the terminal event (at once when the run ended at or before `after`).

    `subscribe()` joins the run's group before the log is read, so nothing published in
    between is missed; iterating replays the log, then follows live messages. A skipped
    number (the channel layer drops messages when a buffer is full) or `heartbeat` seconds
    without a live message make it read the log again; each such quiet spell yields `None`
    once, for a stream that wants to keep its connection alive. `close()` leaves the group.
    """

    def __init__(self, execution_id, after: int = 0, *, layer=None, heartbeat=None) -> None:
        self.execution_id = execution_id
        self.last = max(0, after)
        self.layer = layer or get_channel_layer()
        self.heartbeat = heartbeat or settings.AIMOS_SSE_HEARTBEAT_SECONDS
        self.channel = None
        self.finished = False

    async def subscribe(self) -> None:
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(group_name(self.execution_id), self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            await self.layer.group_discard(group_name(self.execution_id), channel)

    async def __aiter__(self) -> AsyncIterator[dict | None]:
        if self.channel is None:
            await self.subscribe()
        first = True
        while True:
            try:
                ended, stored = await _read_log(self.execution_id, self.last)
            except Exception:
                if first:
                    raise
                # e.g. the database restarting: the live messages go on, the log is read later
                logger.exception("reading the log of execution %s failed", self.execution_id)
                ended, stored = False, []
            first = False
            for event in stored:
                yield self._passed(event)
                if self.finished:
                    return
            if len(stored) == REPLAY_CHUNK:
                continue
            if ended:  # its terminal event was at or before `after`
                return
            async for event in self._live():
                yield event
            if self.finished:
                return

    async def _live(self) -> AsyncIterator[dict | None]:
        """Live events that follow the last one without a gap; stops at a gap, or yields None
        and stops after a quiet heartbeat (the log is read again then)."""
        while True:
            try:
                packet = await asyncio.wait_for(
                    self.layer.receive(self.channel), timeout=self.heartbeat
                )
            except TimeoutError:
                yield None
                return
            for event in packet.get("events", []):
                if event["seq"] <= self.last:
                    continue
                if event["seq"] != self.last + 1:
                    return
                yield self._passed(event)
                if self.finished:
                    return

    def _passed(self, event: dict) -> dict:
        self.last = event["seq"]
        self.finished = event["type"] in TERMINAL_TYPES
        return event
