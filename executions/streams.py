"""Server-sent events of one execution: what the log holds after `after`, then live events,
each `seq` once, until the terminal event — read by `executions.events.RunStream`, as the
run's WebSocket reads them.

Wire format (DESIGN §5): `id: <seq>`, `event: <type>`, `data: <data as JSON>`; a comment
line every AIMOS_SSE_HEARTBEAT_SECONDS while idle. A client that reconnects with
`Last-Event-ID` (or `after`) gets exactly what it missed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from executions.events import RunStream
from executions.models import Execution


def format_event(message: dict) -> str:
    data = json.dumps(message["data"], separators=(",", ":"))
    return f"id: {message['seq']}\nevent: {message['type']}\ndata: {data}\n\n"


async def event_stream(execution_id, after: int = 0) -> AsyncIterator[str]:
    """Yields SSE frames from `after` on, ending after the terminal event."""
    stream = RunStream(execution_id, after)
    await stream.subscribe()
    yield "retry: 2000\n\n"
    try:
        async for event in stream:
            yield ": keep-alive\n\n" if event is None else format_event(event)
    finally:
        await stream.close()


def sse_response(execution: Execution, after: int) -> StreamingHttpResponse:
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
