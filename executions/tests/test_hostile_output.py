"""Hostile output of a real run (the supervisor, the process sandbox, PostgreSQL): U+0000 in any
event or output is stored and returned intact; lines forged on the protocol fd never become
frames of the event stream; a sandbox error shows the user a plain message, not ours."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import async_to_sync
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import services as agents
from agents.tests.packages import agent_files, pack_files
from executions.choices import ErrorType, ExecutionStatus
from executions.models import Execution, ExecutionEvent
from executions.outcomes import SANDBOX_ERROR_MESSAGE, finish
from executions.tests.runs import API, events, execute

pytestmark = pytest.mark.django_db(transaction=True)

NUL = "a\u0000b"
# U+E000 is the escape character of the stored form: it must come back as it was, too.
TRICKY = {"s": NUL, "k\u0000": ["\u0000", "\ue000", "\ue0000", "\ue000\ue000", "\\u0000"]}

CODE = f"""
import json
import os

TRICKY = {TRICKY!r}


def handle(payload, ctx):
    mode = (payload or {{}}).get("mode")
    if mode == "raise":
        raise ValueError("bad\\u0000byte")
    if mode == "forge":
        import __main__
        fd = __main__._PROTOCOL_FD  # the runner's private fd: an agent can reach it
        forged = "x\\ndata: {{}}\\n\\nid: 99999\\nevent: run_completed"
        for text in (
            json.dumps({{"type": forged, "data": {{}}}}),
            "[" * 300000 + "]" * 300000,
        ):
            os.write(fd, text.encode() + b"\\n")
        ctx.delta("after the forgery")
        return "done"
    ctx.delta("d\\u0000")
    ctx.log("l\\u0000")
    ctx.checkpoint(TRICKY, label="c\\u0000")
    ctx.emit("custom", TRICKY)
    print("printed\\u0000")
    return TRICKY
"""


@pytest.fixture
def agent(owner, drain_queues, settings):
    settings.AIMOS_SANDBOX = "process"
    created = agents.create_agent(owner, name="hostile")
    upload = SimpleUploadedFile("hostile.tar.gz", pack_files(agent_files(CODE)))
    version = agents.create_version(created, upload)
    drain_queues()
    version.refresh_from_db()
    assert version.status == "ready", version.build_log
    return created


def run(client, drain, agent, payload) -> dict:
    response = execute(client, agent.pk, input=payload)
    assert response.status_code == 202, response.content
    drain()
    return client.get(f"{API}/executions/{response.json()['id']}").json()


def test_nul_characters_in_every_kind_of_output_are_stored_and_returned_intact(
    owner_api, drain_queues, agent
):
    finished = run(owner_api, drain_queues, agent, {"mode": "nul", "echo": NUL})

    assert finished["status"] == ExecutionStatus.COMPLETED, finished["error_message"]
    assert finished["output"] == TRICKY
    assert finished["input"] == {"mode": "nul", "echo": NUL}
    stream = events(owner_api, finished["id"])
    of = {
        kind: [e["data"] for e in stream if e["type"] == kind]
        for kind in {e["type"] for e in stream}
    }
    assert [d["content"] for d in of["content_delta"]] == ["d\u0000"]
    assert "l\u0000" in [d["message"] for d in of["log"]]
    assert "printed\u0000" in [d["message"] for d in of["log"]]
    assert of["custom"] == [TRICKY]
    assert of["run_completed"][0]["output"] == TRICKY
    checkpoint_id = of["checkpoint"][0]["checkpoint_id"]
    assert of["checkpoint"][0]["label"] == "c\ufffd"  # a text column holds U+FFFD instead
    stored = owner_api.get(f"{API}/checkpoints/{checkpoint_id}").json()
    assert stored["state"] == TRICKY
    assert Execution.objects.get(pk=finished["id"]).output == TRICKY


def test_a_nul_in_the_agents_error_fails_the_run_as_the_agents_fault(
    owner_api, drain_queues, agent
):
    finished = run(owner_api, drain_queues, agent, {"mode": "raise"})

    assert finished["status"] == ExecutionStatus.FAILED
    assert finished["error_type"] == ErrorType.EXCEPTION
    assert "ValueError: bad\ufffdbyte" in finished["error_message"]
    terminal = events(owner_api, finished["id"])[-1]
    assert terminal["type"] == "run_failed"
    assert "ValueError: bad\u0000byte" in terminal["data"]["error"]


def sse_body(client, execution_id) -> str:
    response = client.get(
        f"{API}/executions/{execution_id}/events", HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/event-stream")
    return b"".join(async_to_sync(collect)(response.streaming_content)).decode()


async def collect(chunks) -> list[bytes]:
    return [chunk async for chunk in chunks]


def test_lines_forged_on_the_protocol_fd_never_become_frames_of_the_stream(
    owner_api, drain_queues, agent
):
    finished = run(owner_api, drain_queues, agent, {"mode": "forge"})

    assert finished["status"] == ExecutionStatus.COMPLETED
    assert finished["output"] == "done"
    logged = events(owner_api, finished["id"])
    refused = [e["data"]["message"] for e in logged if e["type"] == "error"]
    assert len(refused) == 2 and all(m.startswith("refused") for m in refused)
    assert [e["type"] for e in logged].count("run_completed") == 1
    body = sse_body(owner_api, finished["id"])
    frames = [frame for frame in body.split("\n\n") if "event: " in frame]
    # exactly one frame per event of the log, each with its own id and type, nothing else
    assert [frame.splitlines()[:2] for frame in frames] == [
        [f"id: {e['seq']}", f"event: {e['type']}"] for e in logged
    ]
    assert all(len(frame.splitlines()) == 3 for frame in frames)
    assert "99999" not in body


def test_the_sse_stream_carries_nul_characters_escaped_as_json(owner_api, drain_queues, agent):
    finished = run(owner_api, drain_queues, agent, {"mode": "nul"})

    body = sse_body(owner_api, finished["id"])
    assert "\u0000" not in body
    assert '"content":"d\\u0000"' in body


def test_a_sandbox_error_shows_a_plain_message_and_logs_the_details(owner, agent, caplog):
    execution = Execution.objects.create(
        user=owner,
        agent=agent,
        version=agent.versions.get(),
        timeout_seconds=10,
        status=ExecutionStatus.RUNNING,
    )
    detail = "unsupported Unicode escape sequence DETAIL: \\u0000 cannot be converted to text."
    with caplog.at_level(logging.ERROR, logger="executions.outcomes"):
        assert finish(
            execution,
            ExecutionStatus.FAILED,
            reason=f"The run's job failed: DataError: {detail}",
            error_type=ErrorType.SANDBOX_ERROR,
        )

    execution.refresh_from_db()
    assert execution.error_message == SANDBOX_ERROR_MESSAGE
    terminal = ExecutionEvent.objects.filter(execution=execution).order_by("seq").last()
    assert terminal.data == {"error": SANDBOX_ERROR_MESSAGE, "error_type": "sandbox_error"}
    assert detail in caplog.text and str(execution.pk) in caplog.text
