"""Helpers for tests against the live stack (daphne + RQ workers in their own processes)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from accounts.services import create_api_key
from agents.tests.packages import example_files, pack_files


class Client(requests.Session):
    """An HTTP client of the live server, authenticated with an API key of `user`."""

    def __init__(self, live, user) -> None:
        super().__init__()
        self.base = f"{live.url}/api/v1"
        _, key = create_api_key(user, name="live tests")
        self.headers["X-API-Key"] = key

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 60)
        return super().request(method, self.base + url, *args, **kwargs)


def deploy(client: Client, example: str, *, timeout: float = 120) -> str:
    """Create an agent from an example, upload it and wait until it is built; its id."""
    agent = client.post("/agents", json={"name": example}).json()
    archive = pack_files(example_files(example))
    response = client.post(
        f"/agents/{agent['id']}/versions", files={"file": (f"{example}.tar.gz", archive)}
    )
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version = client.get(f"/agents/{agent['id']}/versions/1").json()
        if version["status"] in ("ready", "failed"):
            assert version["status"] == "ready", version["build_log"]
            return agent["id"]
        time.sleep(0.2)
    raise AssertionError(f"{example} was not built in {timeout} s")


def wait_for_status(client: Client, execution_id: str, statuses, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = client.get(f"/executions/{execution_id}").json()
        if execution["status"] in statuses:
            return execution
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} never reached {statuses}: {execution}")


def wait_for_events(client: Client, execution_id: str, kind: str, count: int, timeout=30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.get(f"/executions/{execution_id}/events", params={"limit": 1000}).json()
        if sum(event["type"] == kind for event in events) >= count:
            return events
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {kind} events in {timeout} s")


def sse_frames(response: requests.Response) -> Iterator[dict]:
    """Parse a text/event-stream body into frames {id, event, data, comment}."""
    frame: dict = {}
    for raw in response.iter_lines(decode_unicode=True):
        if raw == "":
            if frame:
                yield frame
            frame = {}
            continue
        field, _, value = raw.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "":
            frame["comment"] = value
        elif field == "data":
            frame["data"] = json.loads(value)
        elif field in ("id", "event", "retry"):
            frame[field] = value
    if frame:
        yield frame


def sandbox_processes(marker: str | None = None) -> list[int]:
    """Pids of the live stack's sandboxes: processes whose command line names its sandbox root
    (each sandbox's launcher does; what runs inside dies with it). Other test sessions'
    sandboxes on this host have roots of their own."""
    if marker is None:
        from django.conf import settings

        marker = str(settings.AIMOS_SANDBOX_ROOT)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            pids.append(int(entry.name))
    return pids
