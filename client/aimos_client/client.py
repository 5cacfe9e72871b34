"""`Client` (blocking) and `AsyncClient` (asyncio): the whole AIMOS API.

    from aimos_client import Client

    with Client("http://127.0.0.1:8000", api_key="aimos_…") as aimos:
        deployment = aimos.deploy("my-agent/")
        run = aimos.executions.create("my-agent", {"topic": "a heron"})
        for event in aimos.executions.stream(run["id"]):
            if event.type == "content_delta":
                print(event.data["content"], end="", flush=True)

Both have the same resources (`auth`, `keys`, `agents`, `versions`, `executions`,
`checkpoints`, `batches`, `webhooks`, `system`, `sessions`); with `AsyncClient` each method
returns an awaitable, and the streams are async iterators.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from aimos_client import _resources as resources
from aimos_client._transport import AsyncTransport, Call, Settings, SyncTransport, _StreamState
from aimos_client.models import Event
from aimos_client.packing import Package


def _credentials(api_key: str | None, token: str | None) -> dict[str, str]:
    if api_key and token:
        raise ValueError("give api_key or token, not both")
    if api_key:
        return {"X-API-Key": api_key}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def check_base_url(url: str) -> str:
    """`url` without its trailing slash, when it is an http:// or https:// URL of a server;
    else ValueError (a bare `host:port` would be read as a URL scheme)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
    return url.strip().rstrip("/")


def _events_call(execution_id: str, after: int) -> Call:
    headers = {"Last-Event-ID": str(after)} if after else {}
    return Call("GET", f"/executions/{execution_id}/events", headers=headers)


def _resume_run(execution_id: str) -> Callable[[_StreamState], Call]:
    return lambda state: _events_call(execution_id, state.seq)


def _resume_chat(state: _StreamState) -> Call | None:
    # A chat's POST started the run: it is never sent again (that would start another);
    # once the run is known its own stream continues from the last event.
    if state.execution_id is None:
        return None
    return _events_call(state.execution_id, state.seq)


def _chat_call(agent: str, message: Any, stream: bool, settings: Settings) -> Call:
    # Without a stream the server answers when the run ends, up to the run's own timeout.
    timeout = None if stream else httpx.Timeout(None, connect=settings.connect_timeout)
    body = {"agent_id": str(agent), "message": message, "stream": stream}
    return Call("POST", "/chat", json=body, timeout=timeout)


class _Base:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = resources.Auth(self)
        self.keys = resources.ApiKeys(self)
        self.agents = resources.Agents(self)
        self.versions = resources.Versions(self)
        self.checkpoints = resources.Checkpoints(self)
        self.batches = resources.Batches(self)
        self.webhooks = resources.Webhooks(self)
        self.system = resources.System(self)
        self.sessions = resources.Sessions(self)

    def _use_token(self, token: str) -> None:
        self._transport.set_header("X-API-Key", None)
        self._transport.set_header("Authorization", f"Bearer {token}")

    def _deploy_operation(self, folder, agent, progress, on_log, wait, timeout, **hooks):
        return resources.deploy_operation(
            folder,
            agent=agent,
            progress=progress,
            on_log=on_log,
            wait=wait,
            timeout=timeout,
            upload_timeout=self.settings.upload_timeout,
            interval=self.settings.poll_interval,
            **hooks,
        )


class SyncExecutions(resources.Executions):
    def stream(self, execution_id: str, *, after: int = 0) -> Iterator[Event]:
        """The run's events after `after`, as they happen, ending with its terminal event.
        A dropped connection is opened again with `Last-Event-ID`: each seq comes once."""
        return self._client._transport.stream(
            _events_call(execution_id, after),
            _resume_run(execution_id),
            after=after,
            execution_id=execution_id,
            describe=f"run {execution_id}",
        )

    def wait(self, execution_id: str, *, on_event: Callable[[Event], None] | None = None):
        """Block until the run ends; the run as it ended (Execution)."""
        for event in self.stream(execution_id):
            if on_event is not None:
                on_event(event)
        return self.get(execution_id)


class AsyncExecutions(resources.Executions):
    def stream(self, execution_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        """As `Client.executions.stream`, an async iterator."""
        return self._client._transport.stream(
            _events_call(execution_id, after),
            _resume_run(execution_id),
            after=after,
            execution_id=execution_id,
            describe=f"run {execution_id}",
        )

    async def wait(self, execution_id: str, *, on_event: Callable[[Event], None] | None = None):
        async for event in self.stream(execution_id):
            if on_event is not None:
                on_event(event)
        return await self.get(execution_id)


class Client(_Base):
    """A blocking client of one AIMOS server, authenticated with an API key (`X-API-Key`)
    or a JWT access token (`Authorization: Bearer`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        """`base_url` (http:// or https://; else ValueError) and `api_key` default to
        `AIMOS_URL` and `AIMOS_API_KEY`; `settings` (or keyword overrides of it, e.g.
        `timeout=60`) set timeouts and retries."""
        settings = _settings(settings, overrides)
        super().__init__(settings)
        base_url = base_url or os.environ.get("AIMOS_URL") or "http://127.0.0.1:8000"
        if api_key is None and token is None:
            api_key = os.environ.get("AIMOS_API_KEY") or None
        self.base_url = check_base_url(base_url)
        self._transport = SyncTransport(self.base_url, _credentials(api_key, token), settings)
        self.executions = SyncExecutions(self)

    @classmethod
    def login(cls, base_url: str, username: str, password: str, **kwargs: Any) -> Client:
        """A client authenticated with the access token of `username`."""
        client = cls(base_url, **kwargs)
        client.auth.login(username, password)
        return client

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def execute(self, agent: str, input: Any = None, **options: Any):  # noqa: A002
        """Same as `executions.create`."""
        return self.executions.create(agent, input, **options)

    def chat(self, agent: str, message: Any):
        """Send `message` to `agent` and wait for its answer (ChatResponse)."""
        return self._transport.run(_chat_call(agent, message, False, self.settings))

    def chat_stream(self, agent: str, message: Any) -> Iterator[Event]:
        """Send `message` to `agent` and get the run's events as they happen (resumed from
        the run's own stream when the connection drops after the run started)."""
        return self._transport.stream(
            _chat_call(agent, message, True, self.settings),
            _resume_chat,
            describe=f"a chat with {agent}",
        )

    def deploy(
        self,
        folder: str | Path,
        *,
        agent: str | None = None,
        progress: resources.ProgressCallback | None = None,
        on_log: resources.LogCallback | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_packed: Callable[[Package], None] | None = None,
        on_uploaded: Callable[[dict, dict], None] | None = None,
    ) -> resources.Deployment:
        """Check the folder's manifest, pack it, upload it as a new version of `agent` (the
        manifest's name by default; created when missing) and, with `wait`, follow the build
        until it ends (a failed build is returned, not raised: see `version["status"]`)."""
        return self._transport.run(
            self._deploy_operation(
                folder,
                agent,
                progress,
                on_log,
                wait,
                timeout,
                on_packed=on_packed,
                on_uploaded=on_uploaded,
            )
        )


class AsyncClient(_Base):
    """The asyncio client: the same resources as `Client`, each method awaitable."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        settings = _settings(settings, overrides)
        super().__init__(settings)
        base_url = base_url or os.environ.get("AIMOS_URL") or "http://127.0.0.1:8000"
        if api_key is None and token is None:
            api_key = os.environ.get("AIMOS_API_KEY") or None
        self.base_url = check_base_url(base_url)
        self._transport = AsyncTransport(self.base_url, _credentials(api_key, token), settings)
        self.executions = AsyncExecutions(self)

    @classmethod
    async def login(cls, base_url: str, username: str, password: str, **kwargs: Any):
        client = cls(base_url, **kwargs)
        await client.auth.login(username, password)
        return client

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def execute(self, agent: str, input: Any = None, **options: Any):  # noqa: A002
        return await self.executions.create(agent, input, **options)

    async def chat(self, agent: str, message: Any):
        return await self._transport.run(_chat_call(agent, message, False, self.settings))

    def chat_stream(self, agent: str, message: Any) -> AsyncIterator[Event]:
        return self._transport.stream(
            _chat_call(agent, message, True, self.settings),
            _resume_chat,
            describe=f"a chat with {agent}",
        )

    async def deploy(
        self,
        folder: str | Path,
        *,
        agent: str | None = None,
        progress: resources.ProgressCallback | None = None,
        on_log: resources.LogCallback | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_packed: Callable[[Package], None] | None = None,
        on_uploaded: Callable[[dict, dict], None] | None = None,
    ) -> resources.Deployment:
        return await self._transport.run(
            self._deploy_operation(
                folder,
                agent,
                progress,
                on_log,
                wait,
                timeout,
                on_packed=on_packed,
                on_uploaded=on_uploaded,
            )
        )


def _settings(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    settings = settings or Settings()
    return replace(settings, **overrides) if overrides else settings
