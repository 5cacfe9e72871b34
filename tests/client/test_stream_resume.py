"""The library's event stream survives a dropped connection: a loopback proxy between the
client and the live server cuts the first connection in the middle of an event; the client
connects again with `Last-Event-ID` and gets every seq exactly once."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import pytest
from aimos_client import AsyncClient, Client

from executions.tests.live import Client as HttpClient
from executions.tests.live import deploy
from tests.client import aio

pytestmark = pytest.mark.slow


class CuttingProxy:
    """Forwards loopback TCP connections to `target`. The first connection is cut (both
    sides closed) once the server has sent the start of event frame `cut_at`: the client
    has frames 1 … cut_at-1 whole and a piece of the next."""

    def __init__(self, target_port: int, cut_at: int) -> None:
        self.target_port = target_port
        self.cut_at = cut_at
        self.requests: list[bytes] = []  # each connection's request head
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            cutting = self.connections == 1
            threading.Thread(target=self._serve, args=(downstream, cutting), daemon=True).start()

    def _serve(self, downstream: socket.socket, cutting: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = downstream.recv(65536)
            if not chunk:
                break
            head += chunk
        self.requests.append(head)
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True).start()
        seen = b""
        try:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                if cutting:
                    seen += chunk
                    at = self._frame_start(seen, self.cut_at)
                    if at is not None:
                        # Up to a few bytes into frame `cut_at`, then the line goes dead.
                        sent_before = len(seen) - len(chunk)
                        downstream.sendall(chunk[: max(0, at + 8 - sent_before)])
                        self.cut.set()
                        break
                downstream.sendall(chunk)
        finally:
            for sock in (downstream, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _frame_start(data: bytes, seq: int) -> int | None:
        at = data.find(f"\nid: {seq}\n".encode())
        return None if at < 0 else at + 1

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass

    def headers_of(self, index: int) -> dict[str, str]:
        lines = self.requests[index].decode("latin-1").split("\r\n")[1:]
        pairs = (line.partition(":") for line in lines if ":" in line)
        return {name.strip().lower(): value.strip() for name, _, value in pairs}

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def story(live, owner):
    return deploy(HttpClient(live, owner), "story")


@pytest.fixture
def proxy(live):
    cutting = CuttingProxy(urlsplit(live.url).port, cut_at=9)
    yield cutting
    cutting.close()


def check_resumed(events, proxy: CuttingProxy) -> None:
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every seq, once, in order
    assert proxy.cut.is_set()
    assert len(proxy.requests) == 2
    assert "last-event-id" not in proxy.headers_of(0)
    assert proxy.headers_of(1)["last-event-id"] == "8"  # the last whole frame before the cut
    assert events[-1].type == "run_completed"
    text = "".join(e.data["content"] for e in events if e.type == "content_delta")
    assert text == events[-1].data["output"]
    assert "a wren" in text


def test_the_sync_client_resumes_a_dropped_stream_with_last_event_id(live, api_key, story, proxy):
    with Client(live.url, api_key=api_key) as direct:
        run = direct.executions.create(story, {"topic": "a wren", "delay": 0.03})
    with Client(proxy.url, api_key=api_key) as through_proxy:
        events = list(through_proxy.executions.stream(run["id"]))
    check_resumed(events, proxy)


def test_the_async_client_resumes_a_dropped_stream_with_last_event_id(live, api_key, story, proxy):
    async def follow():
        async with AsyncClient(live.url, api_key=api_key) as direct:
            run = await direct.executions.create(story, {"topic": "a wren", "delay": 0.03})
        async with AsyncClient(proxy.url, api_key=api_key) as through_proxy:
            return [event async for event in through_proxy.executions.stream(run["id"])]

    check_resumed(aio.run(follow), proxy)
