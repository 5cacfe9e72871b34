"""A newcomer's path with the `aimos` command against the live stack: init → dev run →
deploy → run → runs logs, for an agent that returns a value and one that streams text."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GREETING = {"greeting": "Hello, Ada!", "shouted": "ADA"}
NOTE = "Hello! Here is a short note about owls."


def split_sync_output(stdout: str) -> tuple[str, dict]:
    """The sync template streams its greeting, then the run's output is printed as JSON."""
    streamed, _, rest = stdout.partition("\n")
    return streamed, json.loads(rest)


def archive_names(client, agent: str, number: int) -> set[str]:
    data = client.versions.artifact(agent, number)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return set(tar.getnames())


def test_a_sync_agent_from_init_to_its_logs(cli, client):
    made = cli("init", "greeter")
    assert made.returncode == 0, made.stderr
    folder = cli.cwd / "greeter"
    assert (folder / "aimos.yaml").is_file() and (folder / "agent" / "main.py").is_file()
    assert (folder / "requirements.txt").is_file()
    # Left out of the upload: by the template's .aimosignore, and by a .gitignore.
    (folder / "notes.log").write_text("not for the server")
    (folder / ".gitignore").write_text("scratch/\n")
    (folder / "scratch").mkdir()
    (folder / "scratch" / "data.bin").write_bytes(b"\0" * 1000)

    local = cli("dev", "run", "greeter", "--input", '{"name": "Ada"}')
    assert local.returncode == 0, local.stderr
    assert split_sync_output(local.stdout) == ("Hello, Ada!", GREETING)
    assert '→ shout({"text": "Ada"})' in local.stderr
    assert "[info] greeting Ada" in local.stderr

    deployed = cli("deploy", "greeter")
    assert deployed.returncode == 0, deployed.stderr
    assert "greeter v1 is ready" in deployed.stdout
    names = archive_names(client, "greeter", 1)
    assert {"aimos.yaml", "agent/main.py", "agent/__init__.py", "requirements.txt"} <= names
    assert "notes.log" not in names
    assert not any(name.startswith("scratch") for name in names)

    ran = cli("run", "greeter", "--input", '{"name": "Ada"}', "--follow")
    assert ran.returncode == 0, ran.stderr
    assert split_sync_output(ran.stdout) == ("Hello, Ada!", GREETING)
    assert '← shout: {"text": "ADA"}' in ran.stderr
    assert "✓ completed" in ran.stderr

    runs = cli.json("runs", "list", "--agent", "greeter")
    assert [run["status"] for run in runs] == ["completed"]
    run_id = runs[0]["id"]
    assert cli.json("runs", "get", run_id)["output"] == GREETING

    logs = cli("runs", "logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert "greeting Ada" in logs.stdout
    entries = cli.json("runs", "logs", run_id)
    assert {"level": "INFO", "source": "agent", "message": "greeting Ada"}.items() <= entries[
        0
    ].items()


def test_a_streaming_agent_prints_its_text_while_it_runs(cli, client):
    assert cli("init", "teller", "--template", "stream").returncode == 0

    local = cli("dev", "run", "teller", "--input", '{"topic": "owls", "delay": 0}')
    assert local.returncode == 0, local.stderr
    assert local.stdout == NOTE + "\n"

    deployed = cli("deploy", "teller")
    assert deployed.returncode == 0, deployed.stderr

    follow = cli.popen(
        "run",
        "teller",
        "--input",
        '{"topic": "owls", "delay": 0.8}',
        "--follow",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = follow.stdout.read(len("Hello! "))  # returns once the first delta is printed
        assert first == b"Hello! "
        # The word came while the run still had seven to go.
        assert client.executions.list(limit=1)[0]["status"] == "running"
        rest, errors = follow.communicate(timeout=120)
    finally:
        follow.kill()
    assert follow.returncode == 0, errors.decode()
    assert (first + rest).decode() == NOTE + "\n"
    assert "[info] streaming 8 words about owls" in errors.decode()

    run_id = client.executions.list(limit=1)[0]["id"]
    logs = cli("runs", "logs", run_id)
    assert logs.returncode == 0
    assert "streaming 8 words about owls" in logs.stdout
    events = cli.json("runs", "events", run_id)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    text = "".join(e["data"]["content"] for e in events if e["type"] == "content_delta")
    assert text == NOTE == events[-1]["data"]["output"]


def read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 60) -> None:
    """Read the terminal until `marker` appears in what it printed."""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} never appeared in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the command ended and closed the terminal
                chunk = b""
            assert chunk, f"the command ended before {marker!r}: {bytes(seen)!r}"
            seen.extend(chunk)


def test_ctrl_c_while_following_asks_and_cancels_the_run(cli, client):
    assert cli("init", "teller", "--template", "stream").returncode == 0
    assert cli("deploy", "teller").returncode == 0
    controller, terminal = os.openpty()
    follow = cli.popen(
        "run",
        "teller",
        "--input",
        '{"topic": "owls", "delay": 2}',  # seven more words: time enough to ask and cancel
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    seen = bytearray()
    try:
        read_until(controller, b"Hello!", seen)
        run = client.executions.list(limit=1)[0]
        assert run["status"] == "running"
        follow.send_signal(signal.SIGINT)
        read_until(controller, b"Cancel run", seen)
        os.write(controller, b"y\n")
        read_until(controller, b"cancelled", seen)
        assert follow.wait(timeout=60) == 130
    finally:
        follow.kill()
        os.close(controller)
    assert client.executions.get(run["id"])["status"] == "cancelled"


def test_a_failed_build_exits_1_and_shows_its_log(cli, client):
    assert cli("init", "fragile").returncode == 0
    main = cli.cwd / "fragile" / "agent" / "main.py"
    main.write_text("import a_module_nobody_has\n\n\ndef handle(payload):\n    return payload\n")

    local = cli("dev", "run", "fragile")
    assert local.returncode == 1
    assert "a_module_nobody_has" in local.stderr

    deployed = cli("deploy", "fragile")
    assert deployed.returncode == 1
    assert "a_module_nobody_has" in deployed.stderr  # the build log, as it was written
    assert "build of v1 failed" in deployed.stderr
    assert client.versions.get("fragile", 1)["status"] == "failed"

    again = cli.json("deploy", "fragile", code=1)
    assert again["version"]["status"] == "failed"
    assert again["version"]["version"] == "v2"
    assert "a_module_nobody_has" in again["version"]["build_log"]


def test_an_invalid_manifest_is_refused_before_anything_is_uploaded(cli, client):
    assert cli("init", "sloppy").returncode == 0
    manifest = cli.cwd / "sloppy" / "aimos.yaml"
    manifest.write_text("name: Sloppy Name\nentrypoint: agent.missing:handle\ncolour: blue\n")
    refused = cli("deploy", "sloppy")
    assert refused.returncode == 2
    assert "entrypoint: module 'agent.missing' not found" in refused.stderr
    body = cli.json("deploy", "sloppy", code=2)
    fields = {error["field"] for error in body["error"]["errors"]}
    assert fields == {"name", "entrypoint", "colour"}
    assert client.agents.list() == []


def test_json_output_of_every_reading_command_parses(cli, client):
    assert cli("init", "echoer").returncode == 0
    deployment = cli.json("deploy", "echoer")
    assert deployment["version"]["status"] == "ready"
    assert deployment["created"] is True
    (cli.cwd / "input.json").write_text('{"name": "Bo"}')
    run = cli.json("run", "echoer", "--input-file", "input.json")
    assert run["status"] == "completed"
    assert run["output"]["greeting"] == "Hello, Bo!"
    detached = cli.json("run", "echoer", "--detach")
    assert detached["status"] in ("pending", "running", "completed")
    client.executions.wait(detached["id"])

    assert cli.json("whoami")["username"] == "owner"
    assert [agent["name"] for agent in cli.json("agents", "list")] == ["echoer"]
    assert cli.json("agents", "get", "echoer")["current_version"] == "v1"
    assert [v["status"] for v in cli.json("agents", "versions", "echoer")] == ["ready"]
    assert {listed["id"] for listed in cli.json("runs", "list")} == {run["id"], detached["id"]}
    assert cli.json("status")["checks"]["database"]
    assert [key["name"] for key in cli.json("keys", "list")] == ["client tests"]
    assert cli.json("agents", "archive", "echoer")["status"] == "archived"


def test_exit_codes_say_what_went_wrong(cli, live):
    missing = cli("runs", "get", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 4
    assert "not found" in missing.stderr.lower()

    nobody = cli.json("agents", "get", "no-such-agent", code=4)
    assert nobody["error"]["code"] == "not_found"

    cli.env["AIMOS_API_KEY"] = "aimos_0000_wrong"
    assert cli("whoami").returncode == 3
    del cli.env["AIMOS_API_KEY"]
    assert cli.json("whoami", code=3)["error"]["code"] == "not_logged_in"

    assert cli("run", "x", "--input", "{not json").returncode == 2
    assert cli("no-such-command").returncode == 2

    cli.env["AIMOS_URL"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    cli.env["AIMOS_API_KEY"] = "aimos_0000_whatever"
    unreachable = cli("whoami")
    assert unreachable.returncode == 5
    assert "cannot reach http://127.0.0.1:9" in unreachable.stderr


def test_a_failed_run_exits_1_with_its_error(cli, client):
    client.deploy(EXAMPLES / "broken")
    failed = cli("run", "broken", "--input", '"x"')
    assert failed.returncode == 1
    assert "✗ failed (exception): RuntimeError: broken on purpose (input: 'x')" in failed.stderr
    assert "Traceback" in failed.stderr  # the agent's traceback, as a log line
    waited = cli.json("run", "broken", "--wait", code=1)
    assert (waited["status"], waited["error_type"]) == ("failed", "exception")


def test_runs_are_paused_resumed_and_cancelled_from_the_command_line(cli, client):
    client.deploy(EXAMPLES / "slow")
    run_id = cli.json("run", "slow", "--input", '{"seconds": 60, "interval": 0.1}', "--detach")[
        "id"
    ]
    for event in client.executions.stream(run_id):
        if event.type == "content_delta":
            break  # it ticks

    paused = cli("runs", "pause", run_id)
    assert paused.returncode == 0, paused.stderr
    assert f"Run {run_id} is paused." in paused.stdout
    assert cli("runs", "pause", run_id).returncode == 2  # 409: already paused
    assert cli.json("runs", "resume", run_id)["status"] == "running"

    follow = cli.popen(
        "runs", "events", run_id, "--follow", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert follow.stdout.readline() == b"tick 1\n"  # replayed from the start, then live
        cancelled = cli("runs", "cancel", run_id)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"Run {run_id} is cancelled." in cancelled.stdout
        rest, errors = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 1
    assert "⏸ paused" in errors.decode() and "✗ cancelled" in errors.decode()
    assert client.executions.get(run_id)["status"] == "cancelled"
