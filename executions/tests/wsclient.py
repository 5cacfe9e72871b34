"""Helpers for WebSocket tests: Channels' in-process communicator against the real ASGI
application (real Redis channel layer, real database), driven from sync tests."""

from __future__ import annotations

import json

from channels.testing import WebsocketCommunicator

from accounts.services import create_api_key
from agents.models import AgentVersion
from agents.services import create_agent

TIMEOUT = 10


def api_key_of(user) -> str:
    return create_api_key(user, name="websocket tests")[1]


def key_header(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-api-key", key.encode())]


def ready_agent(owner, name: str = "story"):
    """An agent with a ready version 1 (the row as a finished build leaves it)."""
    agent = create_agent(owner, name=name)
    AgentVersion.objects.create(
        agent=agent,
        number=1,
        status="ready",
        artifact_sha256="0" * 64,
        artifact_size=1,
        manifest={"name": name, "entrypoint": "agent.main:handle", "timeout": 30},
        entrypoint="agent.main:handle",
    )
    agent.refresh_state()
    return agent


def communicator(path: str, headers=(), subprotocols=None) -> WebsocketCommunicator:
    from aimos.asgi import application

    return WebsocketCommunicator(
        application, path, headers=list(headers), subprotocols=subprotocols
    )


async def refusal(path: str, headers=(), subprotocols=None) -> dict:
    """Connect and return the first thing the server does after the handshake (for a
    refusal: `{"type": "websocket.close", "code": 44xx}`, with no data frame before it)."""
    client = communicator(path, headers, subprotocols)
    connected, _ = await client.connect(timeout=TIMEOUT)
    assert connected, "a refusal accepts first, so that the client sees the close code"
    try:
        return await client.receive_output(timeout=TIMEOUT)
    finally:
        await client.disconnect()


async def receive(client: WebsocketCommunicator) -> dict:
    """The next JSON message; fails if the server closes instead."""
    output = await client.receive_output(timeout=TIMEOUT)
    assert output["type"] == "websocket.send", output
    return json.loads(output["text"])


async def closed(client: WebsocketCommunicator) -> int:
    """The code of the next output, which must be a close."""
    output = await client.receive_output(timeout=TIMEOUT)
    assert output["type"] == "websocket.close", output
    return output.get("code", 1000)


# --- A real WebSocket client against the live daphne -------------------------------------------


def live_socket(live, path: str, key: str, **options):
    """A `websockets` (sync) connection to the live server, authenticated with an API key."""
    from websockets.sync.client import connect

    return connect(
        live.url.replace("http", "ws", 1) + path,
        additional_headers={"X-API-Key": key},
        open_timeout=30,
        **options,
    )


def read_until_closed(socket, timeout: float = 60) -> tuple[list[dict], int | None]:
    """Every message until the server closes, and the close code."""
    from websockets.exceptions import ConnectionClosed

    messages = []
    try:
        while True:
            messages.append(json.loads(socket.recv(timeout=timeout)))
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else None


def read_until(socket, done, timeout: float = 60) -> list[dict]:
    """Messages until `done(messages)` is true; fails when it takes longer than `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    messages: list[dict] = []
    while not done(messages):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"gave up waiting; received {messages}")
        try:
            messages.append(json.loads(socket.recv(timeout=remaining)))
        except TimeoutError:
            raise AssertionError(f"gave up waiting; received {messages}") from None
    return messages
