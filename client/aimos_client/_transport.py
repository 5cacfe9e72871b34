"""How requests travel: one description of each API call (`Call`), carried out by a
synchronous or an asynchronous transport, so every resource method is written once.

A method returns either a `Call` or a generator that yields `Call`s (and `Sleep`s) and gets
back each call's result: `SyncTransport.run` drives it with blocking I/O and `time.sleep`,
`AsyncTransport.run` with `await` and `asyncio.sleep`.

Guarantees of both transports:
- an error status raises the matching `ApiError` (detail, code, field errors);
- a 429 is sent again after its `Retry-After` (a 503 too, for requests that change nothing),
  at most `max_retries` times and never after waiting more than `max_retry_wait` seconds;
- a network failure or a timeout raises `TransportError`;
- an event stream that drops before the run's terminal event is opened again with
  `Last-Event-ID`, and yields each `seq` once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from httpx_sse import EventSource

from aimos_client import __version__
from aimos_client.errors import (
    AimosError,
    ApiError,
    RateLimitedError,
    ServerError,
    StreamError,
    TransportError,
    error_from_response,
)
from aimos_client.models import Event

API_PREFIX = "/api/v1"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})


@dataclass(frozen=True)
class Settings:
    """Timeouts and retry bounds of a client (seconds)."""

    timeout: float = 30.0  # one request, from sending to the whole answer
    connect_timeout: float = 10.0
    upload_timeout: float = 600.0  # an upload's request
    stream_read_timeout: float = 90.0  # silence tolerated on an event stream (heartbeats: 15 s)
    max_retries: int = 3  # of a 429 (or a 503 of a request that changes nothing)
    max_retry_wait: float = 60.0  # a longer Retry-After is not waited for: the error is raised
    max_reconnects: int = 10  # an event stream's reconnections in a row without a new event
    reconnect_delay: float = 0.5  # before the second reconnection in a row; doubles, up to 8 s
    poll_interval: float = 0.5  # between two looks at a build
    user_agent: str = f"aimos-client/{__version__}"


@dataclass
class Call:
    """One HTTP request of the API and how to read its answer."""

    method: str
    path: str  # under /api/v1, or absolute from the site root when it starts with "//"
    params: dict[str, Any] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # A request body given piece by piece (an upload); a factory, so a retry starts anew.
    content: Callable[[], Iterator[bytes]] | None = None
    acontent: Callable[[], AsyncIterator[bytes]] | None = None
    parse: Callable[[httpx.Response], Any] | None = None
    timeout: float | httpx.Timeout | None = None  # None: the client's
    raw: bool = False  # return the response itself (body read)

    @property
    def url(self) -> str:
        return self.path[1:] if self.path.startswith("//") else API_PREFIX + self.path


@dataclass(frozen=True)
class Sleep:
    seconds: float


Operation = Call | Generator[Any, Any, Any]


def parse_json(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _params(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    return {key: value for key, value in params.items() if value is not None}


def _retry_wait(error: ApiError, call: Call, attempt: int, settings: Settings) -> float | None:
    """Seconds to wait before sending `call` again after `error`, or None: raise it."""
    if attempt >= settings.max_retries:
        return None
    if isinstance(error, RateLimitedError):
        pass
    elif error.status == 503 and call.method in IDEMPOTENT_METHODS:
        pass
    else:
        return None
    wait = error.retry_after
    if wait is None:
        wait = min(2.0**attempt, settings.max_retry_wait)
    return wait if wait <= settings.max_retry_wait else None


def _reconnect_wait(failures: int, settings: Settings, error: AimosError | None) -> float:
    """Wait before the `failures`-th reconnection in a row: none after progress."""
    told = error.retry_after if isinstance(error, ApiError) else None
    if told is not None:
        return min(told, settings.max_retry_wait)
    if failures <= 1:
        return 0.0
    return min(settings.reconnect_delay * 2 ** (failures - 2), 8.0)


class _StreamState:
    """Where an event stream is: the last seq yielded, the run it belongs to."""

    def __init__(self, after: int, execution_id: str | None) -> None:
        self.seq = after
        self.execution_id = execution_id
        self.last: Event | None = None
        self.failures = 0
        self.connected = False  # a connection of this stream was ever answered

    def accept(self, sse_id: str, sse_event: str, sse_data: str) -> Event | None:
        """The event of a frame, or None for a frame to skip (no type, a seq seen)."""
        if not sse_event or not sse_id:
            return None  # "retry:" and other frames that are not events of the run
        try:
            seq = int(sse_id)
        except ValueError:
            return None
        if seq <= self.seq:
            return None
        event = Event.from_sse(sse_id, sse_event, sse_data, self.execution_id)
        if self.execution_id is None and event.type == "run_started":
            self.execution_id = str(event.data.get("run_id") or "") or None
            event = replace(event, execution_id=self.execution_id)
        self.seq, self.last, self.failures = seq, event, 0
        return event

    def failed(self, error: AimosError | None, settings: Settings, describe: str) -> None:
        if not self.connected and isinstance(error, TransportError):
            raise error  # the server cannot be reached at all: say so now
        self.failures += 1
        if self.failures > settings.max_reconnects:
            raise StreamError(
                f"the event stream of {describe} dropped {self.failures} times in a row "
                f"after seq {self.seq}: {error or 'it ended before the run did'}"
            ) from error


def _stream_error(response: httpx.Response) -> ApiError:
    return error_from_response(response)


class SyncTransport:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        settings: Settings,
        http: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"User-Agent": settings.user_agent, **headers},
            follow_redirects=False,
        )

    def close(self) -> None:
        self.http.close()

    def set_header(self, name: str, value: str | None) -> None:
        if value is None:
            self.http.headers.pop(name, None)
        else:
            self.http.headers[name] = value

    def run(self, operation: Operation) -> Any:
        if isinstance(operation, Call):
            return self.send(operation)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = operation.throw(error) if error is not None else operation.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                continue
            try:
                value = self.send(step)
            except AimosError as exc:
                error = exc

    def send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    call.method,
                    call.url,
                    params=_params(call.params),
                    json=call.json,
                    content=call.content() if call.content is not None else None,
                    headers=call.headers or None,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TimeoutException as exc:
                raise TransportError(f"{call.method} {call.url} timed out: {exc}") from exc
            except httpx.TransportError as exc:
                raise TransportError(
                    f"cannot reach {self.base_url} ({call.method} {call.url}): {exc}"
                ) from exc
            if response.status_code >= 400:
                error = error_from_response(response)
                wait = _retry_wait(error, call, attempt, self.settings)
                if wait is None:
                    raise error
                attempt += 1
                time.sleep(wait)
                continue
            if call.raw:
                return response
            return (call.parse or parse_json)(response)

    @contextlib.contextmanager
    def _open(self, call: Call) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(
            self.settings.timeout,
            connect=self.settings.connect_timeout,
            read=self.settings.stream_read_timeout,
        )
        request = self.http.build_request(
            call.method,
            call.url,
            params=_params(call.params),
            json=call.json,
            headers={"Accept": "text/event-stream", "Cache-Control": "no-store", **call.headers},
            timeout=timeout,
        )
        response = self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise _stream_error(response)
            yield response
        finally:
            response.close()

    def stream(
        self,
        first: Call,
        resume: Callable[[_StreamState], Call | None],
        *,
        after: int = 0,
        execution_id: str | None = None,
        describe: str = "the run",
    ) -> Iterator[Event]:
        state = _StreamState(after, execution_id)
        call: Call | None = first
        while True:
            error: AimosError | None = None
            try:
                with self._open(call) as response:
                    state.connected = True
                    for sse in EventSource(response).iter_sse():
                        event = state.accept(sse.id, sse.event, sse.data)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            return
            except httpx.TransportError as exc:
                error = TransportError(f"the connection to {self.base_url} failed: {exc!r}")
            except (ServerError, RateLimitedError) as exc:
                error = exc
            state.failed(error, self.settings, describe)
            call = resume(state)
            if call is None:
                raise StreamError(
                    f"the stream of {describe} dropped before its run was known"
                ) from error
            wait = _reconnect_wait(state.failures, self.settings, error)
            if wait:
                time.sleep(wait)


class AsyncTransport:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        settings: Settings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            headers={"User-Agent": settings.user_agent, **headers},
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    def set_header(self, name: str, value: str | None) -> None:
        if value is None:
            self.http.headers.pop(name, None)
        else:
            self.http.headers[name] = value

    async def run(self, operation: Operation) -> Any:
        if isinstance(operation, Call):
            return await self.send(operation)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = operation.throw(error) if error is not None else operation.send(value)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                continue
            try:
                value = await self.send(step)
            except AimosError as exc:
                error = exc

    async def send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self.http.request(
                    call.method,
                    call.url,
                    params=_params(call.params),
                    json=call.json,
                    content=call.acontent() if call.acontent is not None else None,
                    headers=call.headers or None,
                    timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TimeoutException as exc:
                raise TransportError(f"{call.method} {call.url} timed out: {exc}") from exc
            except httpx.TransportError as exc:
                raise TransportError(
                    f"cannot reach {self.base_url} ({call.method} {call.url}): {exc}"
                ) from exc
            if response.status_code >= 400:
                error = error_from_response(response)
                wait = _retry_wait(error, call, attempt, self.settings)
                if wait is None:
                    raise error
                attempt += 1
                await asyncio.sleep(wait)
                continue
            if call.raw:
                return response
            return (call.parse or parse_json)(response)

    @contextlib.asynccontextmanager
    async def _open(self, call: Call) -> AsyncIterator[httpx.Response]:
        timeout = httpx.Timeout(
            self.settings.timeout,
            connect=self.settings.connect_timeout,
            read=self.settings.stream_read_timeout,
        )
        request = self.http.build_request(
            call.method,
            call.url,
            params=_params(call.params),
            json=call.json,
            headers={"Accept": "text/event-stream", "Cache-Control": "no-store", **call.headers},
            timeout=timeout,
        )
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _stream_error(response)
            yield response
        finally:
            await response.aclose()

    async def stream(
        self,
        first: Call,
        resume: Callable[[_StreamState], Call | None],
        *,
        after: int = 0,
        execution_id: str | None = None,
        describe: str = "the run",
    ) -> AsyncIterator[Event]:
        state = _StreamState(after, execution_id)
        call: Call | None = first
        while True:
            error: AimosError | None = None
            try:
                async with self._open(call) as response:
                    state.connected = True
                    async for sse in EventSource(response).aiter_sse():
                        event = state.accept(sse.id, sse.event, sse.data)
                        if event is None:
                            continue
                        yield event
                        if event.is_terminal:
                            return
            except httpx.TransportError as exc:
                error = TransportError(f"the connection to {self.base_url} failed: {exc!r}")
            except (ServerError, RateLimitedError) as exc:
                error = exc
            state.failed(error, self.settings, describe)
            call = resume(state)
            if call is None:
                raise StreamError(
                    f"the stream of {describe} dropped before its run was known"
                ) from error
            wait = _reconnect_wait(state.failures, self.settings, error)
            if wait:
                await asyncio.sleep(wait)
