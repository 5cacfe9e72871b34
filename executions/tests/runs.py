"""Helpers for the executions tests: agents built from the examples through the real services
and a real RQ worker, and requests made while a worker runs the jobs."""

from __future__ import annotations

import threading
import time

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from agents import services as agents
from agents.models import Agent
from agents.tests.packages import example_files, pack_files
from executions.models import Execution

API = "/api/v1"


def deploy(owner, example: str, drain, *, name: str | None = None) -> Agent:
    """An agent of `owner` built from `examples/<example>` (ready, version v1)."""
    agent = agents.create_agent(owner, name=name or example)
    archive = SimpleUploadedFile(f"{example}.tar.gz", pack_files(example_files(example)))
    version = agents.create_version(agent, archive)
    drain()
    version.refresh_from_db()
    assert version.status == "ready", version.build_log
    agent.refresh_from_db()
    return agent


def execute(client, agent_id, **body):
    return client.post(f"{API}/agents/{agent_id}/execute", body, format="json")


def events(client, execution_id, **params) -> list[dict]:
    response = client.get(f"{API}/executions/{execution_id}/events", params)
    assert response.status_code == 200, response.content
    return response.json()


class Background(threading.Thread):
    """Makes one request in a thread, so the test's thread can run the worker meanwhile."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.response = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.response = self.call()
        except BaseException as exc:  # reported by result()
            self.error = exc
        finally:
            connection.close()

    def result(self, timeout: float = 120):
        self.join(timeout)
        assert not self.is_alive(), "the request did not return"
        if self.error:
            raise self.error
        return self.response


def wait_until(predicate, timeout: float = 30.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{message} not reached in {timeout} s")


def queued_runs(rq_queues) -> int:
    return next(queue for queue in rq_queues if queue.name == "runs").count


def latest_execution() -> Execution | None:
    return Execution.objects.order_by("-created_at").first()
