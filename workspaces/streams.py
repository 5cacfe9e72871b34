"""Streaming answers of sessions: server-sent events (a shell command's output as it comes, a
process's log followed) and file bytes, relayed from the blocking socket of the session's
daemon.

Django serves a synchronous iterator under ASGI only after reading all of it, so each stream
here is an async generator fed by a thread of its own that reads the daemon (`relay`). While
a stream is idle, an SSE comment goes out every AIMOS_SSE_HEARTBEAT_SECONDS, so proxies keep
the connection and a client that went away is noticed: the response is then cancelled, and
the reading thread's connection to the daemon is shut down (the daemon then kills the command
it ran).

Wire format: `event: <kind>`, `data: <JSON>` — `stdout`/`stderr` `{data}` then `exit`
`{exit_code, timed_out, truncated}` for a command; `log` `{data}` then `end` (the process's
entry) for a log; `error` `{detail, code}` when the daemon refused or stopped answering midway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

from django.conf import settings
from django.db import connections
from django.http import StreamingHttpResponse

logger = logging.getLogger(__name__)

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def relay(items: Iterable[T], heartbeat: float | None) -> AsyncIterator[T | None]:
    """The items of a blocking iterable, read in a thread of its own, as they come; None after
    each `heartbeat` seconds without one. An exception of the iterable is raised here. When
    this generator is closed (its reader went away), the thread stops at the next item, or at
    once when the iterable has an `abort()` (`workspaces.operations.Stream`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
            return True
        except RuntimeError:  # the loop is gone: nobody reads any more
            return False

    def pump() -> None:
        try:
            for item in iter(items):
                if stop.is_set() or not put(item):
                    break
        except BaseException as exc:  # noqa: BLE001 — handed to the reader, raised there
            put(_Failed(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            connections.close_all()  # a database connection made here would outlive it
            put(_DONE)

    threading.Thread(target=pump, name="session-stream", daemon=True).start()
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                yield None
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        abort = getattr(items, "abort", None)
        if abort is not None:
            abort()


def frame(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _frames(events: Iterable[tuple[str, dict]]) -> AsyncIterator[str]:
    try:
        async for event in relay(events, settings.AIMOS_SSE_HEARTBEAT_SECONDS):
            yield ": keep-alive\n\n" if event is None else frame(*event)
    except Exception:  # noqa: BLE001 — the stream has begun: say so in it, not as a status
        logger.exception("a session stream failed")
        yield frame("error", {"detail": "Internal server error", "code": "server_error"})


def sse_response(events: Iterable[tuple[str, dict]]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _frames(events), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _bytes(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in relay(chunks, None):
        yield chunk


def bytes_response(chunks: Iterator[bytes], **kwargs) -> StreamingHttpResponse:
    """File bytes as they are read. A failure midway ends the connection short of its
    Content-Length, which is how HTTP says the body is incomplete."""
    return StreamingHttpResponse(_bytes(chunks), **kwargs)
