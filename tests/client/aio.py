"""Running the async client's code from a test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """`asyncio.run(scenario())` in a thread of its own: the test's thread may hold another
    library's running event loop (the browser tests' Playwright keeps one for the session)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(scenario())
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="async-client-test")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
