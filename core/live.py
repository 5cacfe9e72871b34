"""Sending to Channels groups from synchronous code without an event loop and a Redis
connection per message: one sending thread per process, with a loop of its own, sends the
messages in the order they were given. A process about to exit (a job's work horse) calls
`flush()` first. Best effort, like all live delivery here: what is lost is in the database,
which readers fall back on."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


class _Sender:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.queue: asyncio.Queue | None = None
        threading.Thread(target=self._run, name="channel-sender", daemon=True).start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._send_all())

    async def _send_all(self) -> None:
        self.queue = asyncio.Queue()
        self.ready.set()
        while True:
            group, message = await self.queue.get()
            if isinstance(message, threading.Event):  # `flush`: all before it has left
                message.set()
                continue
            try:
                layer = get_channel_layer()
                if layer is not None:
                    await layer.group_send(group, message)
            except Exception:  # the database is the record; readers fall back on it
                logger.exception("could not send %s to %s", message.get("type"), group)

    def send(self, group: str, message: dict) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (group, message))


_sender: _Sender | None = None
_lock = threading.Lock()


def flush(timeout: float = 5.0) -> None:
    """Wait until every message given so far has left (for a process about to exit)."""
    sender = _sender
    if sender is not None and sender.pid == os.getpid():
        sent = threading.Event()
        sender.send("", sent)
        sent.wait(timeout)


def send_soon(group: str, message: dict) -> None:
    """Queue `message` for `group` and return at once; messages leave in order."""
    global _sender
    with _lock:
        if _sender is None or _sender.pid != os.getpid():  # threads do not survive a fork
            _sender = _Sender()
    _sender.send(group, message)
