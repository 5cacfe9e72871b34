"""What the `aimos` command prints, against the live stack: agent data never read as markup
and never wrapped, a key and a run id alone on stdout, streamed text unbroken by notes,
tables in pipes and terminals, the end of a run in its log, archived agents, timestamps,
closed pipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aimos_client import Client

from tests.client.conftest import Cli

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MARKUP = ["[red]r[/red] plain", "closing [/b] tag", ":smile: [bold]x"]


def make_agent(root: Path, name: str, main: str, *, timeout: int = 30) -> Path:
    folder = root / name
    (folder / "agent").mkdir(parents=True)
    (folder / "agent" / "__init__.py").write_text("")
    (folder / "agent" / "main.py").write_text(main)
    (folder / "aimos.yaml").write_text(
        f"name: {name}\nentrypoint: agent.main:handle\ntimeout: {timeout}\n"
    )
    return folder


def line_starting(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, text)
    return lines[0]


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def pipeline(cli: Cli, command: str) -> subprocess.CompletedProcess:
    """`aimos …` read by another program (`| head -1`); the exit code is aimos's."""
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def on_terminal(cli: Cli, *args: str) -> str:
    """What `aimos …` shows on a terminal (stdout and stderr both), colours left out."""
    controller, terminal = os.openpty()
    process = cli.popen(*args, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the command ended and the terminal closed
                break
            if not chunk:
                break
            seen.extend(chunk)
        assert process.wait(timeout=120) == 0, seen.decode()
    finally:
        process.kill()
        os.close(controller)
    return ANSI.sub("", seen.decode())


# --- 1: agent data is never markup, never wrapped ----------------------------------------------


def test_agent_data_is_printed_as_it_is(cli, client):
    client.deploy(EXAMPLES / "echo")
    cli.env["COLUMNS"] = "40"  # what a narrow terminal would say: a pipe must not care
    for text in MARKUP:
        waited = cli("run", "echo", "--input", json.dumps(text), "--wait")
        assert (waited.returncode, waited.stdout) == (0, text + "\n"), waited.stderr
        followed = cli("run", "echo", "--input", json.dumps(text))
        assert (followed.returncode, followed.stdout) == (0, text + "\n"), followed.stderr

    document = {"words": " ".join(["lorem"] * 60), "markup": MARKUP, "numbers": list(range(40))}
    waited = cli("run", "echo", "--input", json.dumps(document), "--wait")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == document
    followed = cli("run", "echo", "--input", json.dumps(document))
    assert json.loads(followed.stdout) == document

    run_id = client.executions.list(limit=1)[0]["id"]
    shown = cli("runs", "get", run_id)
    assert shown.returncode == 0, shown.stderr
    for field in ("input", "output"):
        value = line_starting(shown.stdout, field).removeprefix(field).strip()
        assert json.loads(value) == document  # the whole document, on one line

    closing = cli("run", "echo", "--input", json.dumps("closing [/b] tag"), "--detach")
    client.executions.wait(closing.stdout.strip())
    shown = cli("runs", "get", closing.stdout.strip())
    assert shown.returncode == 0, shown.stderr
    assert line_starting(shown.stdout, "output").endswith('"closing [/b] tag"')


# --- 2, 3: the key, the run id, alone on stdout ------------------------------------------------


def test_a_new_key_is_alone_on_stdout_and_whole(cli, live):
    cli.env["COLUMNS"] = "40"
    created = cli("keys", "create", "a key with a long name [red]and markup[/red] in it")
    assert created.returncode == 0, created.stderr
    assert created.stdout.count("\n") == 1
    key = created.stdout.strip()
    assert re.fullmatch(r"aimos_\w+", key)
    with Client(live.url, api_key=key) as aimos:
        assert aimos.auth.me()["username"] == "owner"


def test_detach_prints_only_the_run_id(cli, client, aimos_command):
    client.deploy(EXAMPLES / "echo")
    started = cli("run", "echo", "--input", '"hi"', "--detach")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.removesuffix("\n")
    assert is_uuid(run_id) and started.stdout == run_id + "\n"
    assert f"aimos runs events {run_id} --follow" in started.stderr
    assert client.executions.wait(run_id)["output"] == "hi"
    # As a shell script uses it.
    script = pipeline(cli, f'RID=$({aimos_command} run echo --detach) && echo "<$RID>"')
    assert re.fullmatch(r"<[0-9a-f-]{36}>\n", script.stdout), script.stderr


# --- 4: streamed text unbroken -----------------------------------------------------------------

HELLO_WORLD = """
def handle(payload, ctx):
    ctx.delta("Hello")
    ctx.log("between")
    ctx.delta(" world")
"""


def test_follow_writes_deltas_as_streamed(cli, client, tmp_path):
    client.deploy(make_agent(tmp_path, "hello", HELLO_WORLD))
    followed = cli("run", "hello")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "Hello world\n"
    assert "[info] between" in followed.stderr
    run_id = client.executions.list(limit=1)[0]["id"]
    replayed = cli("runs", "events", run_id, "--follow")
    assert (replayed.returncode, replayed.stdout) == (0, "Hello world\n")


# --- 5: tables ---------------------------------------------------------------------------------

LONG_NAME = "a key whose name is much longer than any narrow terminal is wide, on purpose"


def test_tables_are_never_wrapped_in_a_pipe(cli, client):
    client.keys.create(LONG_NAME)
    cli.env["COLUMNS"] = "40"
    listed = cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    line = line_starting(
        listed.stdout, next(k["id"] for k in client.keys.list() if k["name"] == LONG_NAME)
    )
    assert LONG_NAME in line
    assert all(line == line.rstrip() for line in listed.stdout.splitlines())


def test_a_terminal_table_folds_names_not_ids_or_times(cli, client):
    key = client.keys.create(LONG_NAME)
    # Too narrow for every column whole: the name gives way, not the id, prefix or times.
    cli.env["COLUMNS"] = "110"
    lines = on_terminal(cli, "keys", "list").splitlines()
    assert max(len(line) for line in lines) <= 110
    header = next(line for line in lines if " name " in line and " prefix " in line)
    start, end = header.index("name"), header.index("prefix")
    first = next(index for index, line in enumerate(lines) if key["id"] in line)  # id whole
    created = datetime.fromisoformat(key["created_at"].replace("Z", "+00:00")).astimezone()
    assert created.strftime("%Y-%m-%d %H:%M:%S") in lines[first]  # the time whole too
    assert f" {key['key_prefix']} " in lines[first]
    # The name folds over the row's lines, in its own column: the rest of them is blank.
    block = [lines[first]]
    for line in lines[first + 1 :]:
        if line[:36].strip():
            break
        block.append(line)
    assert len(block) > 1
    assert all(not line[:start].strip() and not line[end:].strip() for line in block[1:])
    name = "".join(line[start:end] for line in block)
    assert re.sub(r"\s", "", name) == re.sub(r"\s", "", LONG_NAME)  # all of it, in order


def test_deploy_on_a_terminal_shows_its_progress_bar(cli):
    screen = on_terminal(cli, "deploy", EXAMPLES / "echo")
    assert "uploading" in screen and "━" in screen  # the bar, drawn
    assert "[progress" not in screen  # its own style is not printed as text
    assert "echo v1 is ready" in screen


# --- 6: archived agents ------------------------------------------------------------------------


def test_archived_agents_are_hidden_and_can_be_restored(cli, client):
    client.deploy(EXAMPLES / "echo")
    client.deploy(EXAMPLES / "broken")
    assert cli("agents", "archive", "broken").returncode == 0
    assert [a["name"] for a in cli.json("agents", "list")] == ["echo"]
    assert {a["name"] for a in cli.json("agents", "list", "--all")} == {"echo", "broken"}
    assert [a["name"] for a in cli.json("agents", "list", "--status", "archived")] == ["broken"]
    listed = cli("agents", "list")
    assert "echo" in listed.stdout and "broken" not in listed.stdout

    refused = cli("deploy", EXAMPLES / "broken")
    assert refused.returncode == 2
    assert "archived" in refused.stderr
    assert "aimos agents restore broken" in refused.stderr
    body = cli.json("deploy", EXAMPLES / "broken", code=2)
    assert body["error"]["code"] == "conflict" and body["error"]["status"] == 409

    restored = cli("agents", "restore", "broken")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == "broken is ready.\n"
    assert client.agents.get("broken")["status"] == "ready"
    assert cli("deploy", EXAMPLES / "broken").returncode == 0
    assert cli.json("agents", "restore", "echo")["status"] == "ready"  # not archived: as it is


# --- 8: why a run ended, at the end of its log ------------------------------------------------


def test_the_log_of_a_timed_out_run_ends_with_why(cli, client):
    client.deploy(EXAMPLES / "slow")
    waited = cli(
        "run", "slow", "--input", '{"seconds": 60, "interval": 0.1}', "--timeout", "1", "--wait"
    )
    assert waited.returncode == 1
    assert "timed_out" in waited.stderr
    run = client.executions.list(limit=1)[0]
    assert run["status"] == "timed_out"
    end = client.executions.events(run["id"])[-1]
    assert end.type == "run_timed_out" and end.data["reason"]
    logs = cli("runs", "logs", run["id"])
    assert logs.returncode == 0, logs.stderr
    last = logs.stdout.splitlines()[-1]
    assert last.endswith(f"ERROR   platform run timed out: {end.data['reason']}"), last
    entries = cli.json("runs", "logs", run["id"])
    assert entries[-1]["source"] == "platform"
    assert entries[-1]["metadata"] == {"seq": end.seq, "event": "run_timed_out"}
    assert entries[-1]["message"] == f"run timed out: {end.data['reason']}"
    followed = cli("runs", "logs", run["id"], "--follow")
    assert followed.stdout.splitlines()[-1] == last


def test_the_log_of_a_cancelled_run_ends_with_why(cli, client):
    client.deploy(EXAMPLES / "slow")
    run_id = cli("run", "slow", "--input", '{"seconds": 60, "interval": 0.1}', "--detach").stdout
    run_id = run_id.strip()
    for event in client.executions.stream(run_id):
        if event.type == "content_delta":
            break  # it runs
    assert cli("runs", "cancel", run_id).returncode == 0
    end = client.executions.events(run_id)[-1]
    assert end.type == "run_cancelled" and end.data["reason"]
    logs = cli("runs", "logs", run_id)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[-1].endswith(f"platform run cancelled: {end.data['reason']}")
    assert cli.json("runs", "logs", run_id)[-1]["message"] == f"run cancelled: {end.data['reason']}"
    followed = cli("runs", "logs", run_id, "--follow", "--json").stdout.splitlines()
    assert json.loads(followed[-1])["metadata"] == {"seq": end.seq, "event": "run_cancelled"}
    # A run that completed has no such line.
    completed = client.execute("slow", {"seconds": 0.1, "interval": 0.1}, wait=60)
    assert completed["status"] == "completed"
    entries = cli.json("runs", "logs", completed["id"])
    assert all("event" not in entry["metadata"] for entry in entries)


# --- 11: names, timestamps, the build followed, local times ------------------------------------


def test_running_a_missing_agent_names_it(cli):
    missing = cli("run", "nope")
    assert missing.returncode == 4
    assert "No agent named 'nope'" in missing.stderr
    assert missing.stderr.split(" (")[0] == cli("agents", "get", "nope").stderr.split(" (")[0]
    assert cli.json("run", "nope", code=4)["error"]["code"] == "not_found"


def test_followed_events_carry_their_timestamps(cli, client):
    client.deploy(EXAMPLES / "story")
    run = client.execute("story", {"topic": "owls", "delay": 0})
    lines = cli("runs", "events", run["id"], "--follow", "--json")
    assert lines.returncode == 0, lines.stderr
    followed = [json.loads(line) for line in lines.stdout.splitlines()]
    stored = cli.json("runs", "events", run["id"])
    assert followed == stored
    assert all(event["timestamp"] for event in followed)


def test_deploy_no_wait_says_how_to_follow_the_build(cli, client):
    started = cli("deploy", EXAMPLES / "echo", "--no-wait")
    assert started.returncode == 0, started.stderr
    assert "Follow its build: aimos agents versions echo --follow" in started.stderr
    followed = cli("agents", "versions", "echo", "--follow")
    assert followed.returncode == 0, followed.stderr
    assert re.search(r"v1 +ready", followed.stdout)
    assert client.versions.get("echo", 1)["build_log"].splitlines()[0] in followed.stderr


def test_times_are_shown_in_local_time_with_their_zone(cli, client):
    client.deploy(EXAMPLES / "echo")
    run = client.execute("echo", 1, wait=60)
    cli.env["TZ"] = "XYZ-5:30"  # UTC+5:30, named XYZ: needs no zone files
    created = datetime.fromisoformat(run["created_at"].replace("Z", "+00:00"))
    local = (created + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%d %H:%M:%S") + " XYZ"
    assert local in cli("runs", "list").stdout
    assert line_starting(cli("runs", "get", run["id"]).stdout, "created_at").endswith(local)


# --- 9: a closed pipe --------------------------------------------------------------------------

CHATTY = """
def handle(payload, ctx):
    pieces = [f"{index:04} " + "x" * 1000 for index in range(300)]
    for piece in pieces:
        ctx.delta(piece)
    return "".join(pieces)
"""


def test_following_into_a_closed_pipe_ends_quietly(cli, client, tmp_path, aimos_command):
    client.deploy(make_agent(tmp_path, "chatty", CHATTY))
    run = client.execute("chatty", None, wait=120)
    assert run["status"] == "completed"
    # 300 KB of events: more than a pipe holds, so the command meets the closed pipe.
    first = pipeline(cli, f"{aimos_command} runs events {run['id']} --follow --json | head -1")
    assert (first.returncode, first.stderr) == (0, "")
    assert json.loads(first.stdout)["type"] == "run_started"
    for command in (
        f"runs events {run['id']} --json",
        f"runs events {run['id']}",
        "run chatty --wait",
        "run chatty",
    ):
        cut = pipeline(cli, f"{aimos_command} {command} | head -c 2")
        assert cut.returncode == 0, (command, cut.stderr)
        assert cut.stdout in ("00", "[\n", "{\n"), (command, cut.stdout)
        assert "rror" not in cut.stderr and "pipe" not in cut.stderr, (command, cut.stderr)
