"""Server-sent events of one execution: what the log holds after `after`, then live events
from the channel layer, de-duplicated by `seq`, until the terminal event.

Wire format (DESIGN §5): `id: <seq>`, `event: <type>`, `data: <data as JSON>`; a comment
line every AIMOS_SSE_HEARTBEAT_SECONDS while idle. A client that reconnects with
`Last-Event-ID` (or `after`) gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from executions.choices import TERMINAL_EVENTS
from executions.models import Execution, ExecutionEvent

TERMINAL_TYPES = frozenset(TERMINAL_EVENTS.values())


def format_event(message: dict) -> str:
    data = json.dumps(message["data"], separators=(",", ":"))
    return f"id: {message['seq']}\nevent: {message['type']}\ndata: {data}\n\n"


@sync_to_async
def _stored_after(execution_id, after: int) -> list[dict]:
    events = ExecutionEvent.objects.filter(execution_id=execution_id, seq__gt=after).order_by("seq")
    return [event.as_message() for event in events[:1000]]


@sync_to_async
def _has_ended(execution_id) -> bool:
    return Execution.objects.filter(pk=execution_id, status__in=TERMINAL_EVENTS.keys()).exists()


async def event_stream(execution_id, after: int = 0) -> AsyncIterator[str]:
    """Yields SSE frames from `after` on, ending after the terminal event."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = f"execution.{execution_id}"
    # Subscribe before reading the log, so nothing published in between is missed.
    await layer.group_add(group, channel)
    last = after
    heartbeat = settings.AIMOS_SSE_HEARTBEAT_SECONDS
    yield "retry: 2000\n\n"
    try:
        while True:
            # Catch up from the database: the whole log at first, and whenever the live
            # messages skip a number (the channel layer may drop under load).
            # The status first: a run that ended before its log was read has its terminal
            # event in what is read next.
            ended = await _has_ended(execution_id)
            stored = await _stored_after(execution_id, last)
            for message in stored:
                yield format_event(message)
                last = message["seq"]
                if message["type"] in TERMINAL_TYPES:
                    return
            if len(stored) == 1000:
                continue
            if not stored and ended:
                # Ended, and its terminal event is at or before `after`: nothing more to send.
                return
            gap = False
            while not gap:
                try:
                    packet = await asyncio.wait_for(layer.receive(channel), timeout=heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    gap = True  # look at the database again, in case a message was lost
                    continue
                for message in packet.get("events", []):
                    if message["seq"] <= last:
                        continue
                    if message["seq"] != last + 1:
                        gap = True
                        break
                    yield format_event(message)
                    last = message["seq"]
                    if message["type"] in TERMINAL_TYPES:
                        return
    finally:
        await layer.group_discard(group, channel)


def parse_after(request) -> int:
    """`Last-Event-ID` (a reconnecting EventSource) wins over the `after` query parameter."""
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        from rest_framework.exceptions import ValidationError

        raise ValidationError({"after": "Must be an integer (the last seq received)."}) from None


def sse_response(request, execution: Execution, after: int | None = None) -> StreamingHttpResponse:
    if after is None:
        after = parse_after(request)
    response = StreamingHttpResponse(
        event_stream(execution.pk, after), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class EventStreamRenderer(BaseRenderer):
    """Lets a view accept `Accept: text/event-stream` (the view returns the stream itself)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        # Only errors reach a renderer here (the stream is a StreamingHttpResponse): send them
        # as JSON so the client can read them.
        return json.dumps(data).encode()


def wants_stream(request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")
