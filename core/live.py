"""Sending to Channels groups from long-lived synchronous code (the run workers) without an
event loop and a Redis connection per message: one sending thread per process, with a loop
of its own, sends the messages in the order they were given. Best effort, like all live
delivery here: what is lost is in the database, which readers fall back on."""

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


def send_soon(group: str, message: dict) -> None:
    """Queue `message` for `group` and return at once; messages leave in order."""
    global _sender
    with _lock:
        if _sender is None or _sender.pid != os.getpid():  # threads do not survive a fork
            _sender = _Sender()
    _sender.send(group, message)
