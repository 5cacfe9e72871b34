"""The `aimos` command where no server is needed (or none answers): usage errors and their
exit codes and JSON codes, URLs, prompts without a terminal, closed pipes, help, `init`
names, `dev run`'s output and hints; and the pieces behind them (the event printer, the
build log cut into lines, local times)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from aimos_client import config
from aimos_client._render import EventPrinter, console, local_time
from aimos_client._resources import wait_for_build
from aimos_client._transport import Call, Sleep
from aimos_client.models import Event

from tests.client.conftest import Cli, cli_env

# Nothing listens on the discard port of this machine: a server that is down.
DOWN = "http://127.0.0.1:9"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def local(home, tmp_path, aimos_command) -> Cli:
    """`aimos` with no server configured (and none needed)."""
    work = tmp_path / "work"
    work.mkdir()
    return Cli(cli_env(home), work)


def agent(cli: Cli, name: str, main: str) -> Path:
    made = cli("init", name)
    assert made.returncode == 0, made.stderr
    (cli.cwd / name / "agent" / "main.py").write_text(main)
    return cli.cwd / name


def error_of(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout)["error"]


# --- 4: deltas on stdout exactly as streamed -------------------------------------------------

HELLO_WORLD = """
def handle(payload, ctx):
    ctx.delta("Hello")
    ctx.log("between")
    ctx.tool_call("look", {"at": "[red]x[/red]"})
    ctx.delta(" world")
"""


def events_of(*items: tuple[str, dict]) -> list[Event]:
    return [Event(seq, kind, data) for seq, (kind, data) in enumerate(items, start=1)]


def test_the_printer_keeps_notes_out_of_the_streamed_text():
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(console(file=err), out)
    for event in events_of(
        ("content_delta", {"content": "Hello"}),
        ("log", {"level": "info", "message": "between [b]bold[/b]"}),
        ("content_delta", {"content": " world"}),
        ("run_completed", {"output": None, "metrics": {"duration_ms": 5}}),
    ):
        printer(event)
    assert out.getvalue() == "Hello world\n"
    assert err.getvalue() == "[info] between [b]bold[/b]\n✓ completed in 5 ms\n"


def test_dev_run_streams_deltas_unbroken_and_notes_on_stderr(local):
    folder = agent(local, "hello", HELLO_WORLD)
    ran = local("dev", "run", folder)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "Hello world\n"
    assert "[info] between" in ran.stderr
    assert '→ look({"at": "[red]x[/red]"})' in ran.stderr


def read_all(fd: int) -> bytes:
    """What a command wrote to its terminal, until it closed it."""
    seen = bytearray()
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the command ended and the terminal closed
            return bytes(seen)
        if not chunk:
            return bytes(seen)
        seen.extend(chunk)


def test_on_a_terminal_a_note_starts_its_own_line_and_the_text_goes_on(local):
    folder = agent(local, "hello", HELLO_WORLD)
    controller, terminal = os.openpty()
    process = local.popen("dev", "run", folder, stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        screen = ANSI.sub("", read_all(controller).decode())
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(controller)
    assert "Hello\r\n[info] between\r\n" in screen
    assert '[red]x[/red]"})\r\n world\r\n✓ completed' in screen


# --- 9: usage errors, URLs, prompts, closed pipes, JSON codes --------------------------------


def test_a_bad_state_names_state(local):
    folder = agent(local, "plain", "def handle(payload, ctx):\n    return ctx.state\n")
    refused = local("dev", "run", folder, "--state", "{bad")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --state is not JSON")
    body = local.json("dev", "run", folder, "--state", "{bad", code=2)
    assert body["error"]["code"] == "invalid_json"
    assert local.json("dev", "run", folder, "--state", '{"n": 1}')["output"] == {"n": 1}


def test_a_url_without_its_scheme_is_a_usage_error(local, home):
    for args in (
        ["--url", "localhost:8000", "--api-key", "aimos_x_y", "whoami"],
        ["login", "--url", "localhost:8000", "--api-key", "aimos_x_y"],
        ["--url", "127.0.0.1:8000", "login", "--api-key", "aimos_x_y"],
    ):
        refused = local(*args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert "is not a server URL; give it with http:// or https://" in refused.stderr
        assert "(e.g. http://" in refused.stderr
    assert not config_file(home).exists()  # the login stored nothing
    local.env["AIMOS_URL"] = "localhost:8000"
    refused = local("--api-key", "aimos_x_y", "whoami", "--json")
    assert refused.returncode == 2
    body = error_of(refused)
    assert body["code"] == "invalid_url"
    assert body["detail"].startswith("AIMOS_URL: 'localhost:8000' is not a server URL")


def test_a_password_login_without_a_terminal_asks_for_password(local):
    refused = local("login", "--url", DOWN, "-u", "admin", input="")
    assert refused.returncode == 2
    assert "needs the password: give --password" in refused.stderr
    assert "GetPassWarning" not in refused.stderr and "Warning" not in refused.stderr
    refused = local("login", "--url", DOWN, "-u", "admin", "--json", input="")
    assert refused.returncode == 2 and error_of(refused)["code"] == "usage_error"


def test_a_prompt_without_an_answer_names_the_option(local):
    refused = local("login", input="")  # stdin at its end: no URL typed
    assert refused.returncode == 2
    assert "give it with --url" in refused.stderr
    assert "Aborted" not in refused.stderr


STREAM_LOTS = """
def handle(payload, ctx):
    for index in range(300):
        ctx.delta(f"{index:04} " + "x" * 1000 + "\\n")
"""


def pipeline(cli: Cli, command: str) -> subprocess.CompletedProcess:
    """`aimos …` whose stdout is read by another program; the exit code is aimos's."""
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        env=cli.env,
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_closed_stdout_ends_the_command_quietly(local, aimos_command):
    folder = agent(local, "chatty", STREAM_LOTS)
    aimos = aimos_command
    # 300 KB of deltas: far more than a pipe holds, so the writes meet the closed pipe.
    cut = pipeline(local, f"{aimos} dev run {folder} | head -c 4")
    # Only the run's own note on stderr: no error, no traceback about the pipe.
    assert (cut.returncode, cut.stdout, cut.stderr) == (0, "0000", "▶ run local started\n")
    cut = pipeline(local, f"{aimos} dev run {folder} --json | head -1")
    assert (cut.returncode, cut.stdout, cut.stderr) == (0, "{\n", "")
    for command in ("--help", "run --help", "agents --help"):
        cut = pipeline(local, f"{aimos} {command} | head -c 1")
        assert (cut.returncode, cut.stderr) == (0, ""), command
    # Piped whole, the same commands write everything and succeed.
    whole = local("dev", "run", folder)
    assert whole.returncode == 0 and len(whole.stdout.splitlines()) == 300


def test_client_errors_have_lowercase_codes(local):
    sloppy = local.cwd / "sloppy"
    sloppy.mkdir()
    (sloppy / "aimos.yaml").write_text("name: Not Valid\nentrypoint: agent.main:handle\n")
    assert error_of(local("dev", "run", sloppy, "--json"))["code"] == "invalid_manifest"
    deployed = local("--api-key", "k", "deploy", sloppy, "--json")
    assert deployed.returncode == 2 and error_of(deployed)["code"] == "invalid_manifest"
    unreachable = local("--url", DOWN, "--api-key", "aimos_x_y", "whoami", "--json")
    assert unreachable.returncode == 5
    assert error_of(unreachable)["code"] == "unreachable"
    both = local("--url", DOWN, "--api-key", "k", "run", "a", "--detach", "--wait", "--json")
    assert both.returncode == 2
    assert error_of(both) == {
        "status": None,
        "code": "usage_error",
        "detail": "--wait and --detach exclude each other",
        "errors": [],
    }
    missing = local("--url", DOWN, "--api-key", "k", "run", "a", "-f", "nope.json", "--json")
    assert missing.returncode == 2 and error_of(missing)["code"] == "file_error"
    assert error_of(local("whoami", "--json"))["code"] == "not_logged_in"
    again = local("init", "taken")
    assert again.returncode == 0
    assert error_of(local("init", "taken", "--json"))["code"] == "init_refused"


# --- 11: the smaller ones ----------------------------------------------------------------------


def test_run_refuses_detach_with_wait_and_follow_with_wait(local):
    for flag in ("--detach", "--follow"):
        refused = local("--url", DOWN, "--api-key", "k", "run", "a", flag, "--wait")
        assert refused.returncode == 2, refused.stderr
        assert "exclude each other" in refused.stderr


def test_runs_list_refuses_a_limit_of_0(local):
    for limit in ("0", "1001"):
        refused = local("--url", DOWN, "--api-key", "k", "runs", "list", "--limit", limit)
        assert refused.returncode == 2, refused.stderr
        assert "--limit" in refused.stderr
        assert "cannot reach" not in refused.stderr  # refused before any request


def test_help_shows_flags_bare_and_arguments_without_braces(local):
    shown = local("run", "--help")
    assert shown.returncode == 0
    assert "<bool>" not in shown.stdout
    assert "Usage: aimos run [OPTIONS] AGENT" in shown.stdout
    assert "{agent}" not in shown.stdout
    assert re.search(r"--wait +Wait for the end", shown.stdout)
    top = local("--help")
    assert "<bool>" not in top.stdout and "Usage: aimos [OPTIONS] COMMAND [ARGS]..." in top.stdout
    init_help = local("init", "--help")
    assert "Usage: aimos init [OPTIONS] [FOLDER]" in init_help.stdout
    for group in ("agents", "runs", "keys", "dev"):
        shown = local(group, "--help")
        assert f"Usage: aimos {group} [OPTIONS] COMMAND [ARGS]..." in shown.stdout
    assert "<bool>" not in local("agents", "list", "--help").stdout


def test_init_quotes_its_hint_and_makes_names_of_any_folder(local):
    made = local("init", "Bad Name")
    assert made.returncode == 0, made.stderr
    assert "aimos dev run 'Bad Name' --input '{}'" in made.stderr
    assert "aimos deploy 'Bad Name'" in made.stderr
    assert "name: bad-name\n" in (local.cwd / "Bad Name" / "aimos.yaml").read_text()

    made = local("init", "Über Straße")
    assert made.returncode == 0, made.stderr
    assert "name: uber-strasse\n" in (local.cwd / "Über Straße" / "aimos.yaml").read_text()
    assert local("dev", "run", "Über Straße").returncode == 0

    refused = local("init", "東京")
    assert refused.returncode == 2
    assert "cannot make an agent name of '東京'" in refused.stderr
    assert "--name" in refused.stderr
    assert not (local.cwd / "東京").exists()
    named = local("init", "東京", "--name", "tokyo")
    assert named.returncode == 0 and "name: tokyo\n" in (local.cwd / "東京/aimos.yaml").read_text()

    refused = local("init", "x", "--name", "Über")
    assert refused.returncode == 2 and "(e.g. 'uber')" in refused.stderr


def test_dev_run_on_a_missing_package_says_what_to_do(local):
    folder = agent(local, "needy", "import a_package_nobody_has\n\ndef handle(p):\n    return p\n")
    failed = local("dev", "run", folder)
    assert failed.returncode == 1
    assert "hint:" in failed.stderr
    assert "no module 'a_package_nobody_has'" in failed.stderr
    assert "-m pip install -r" in failed.stderr and "requirements.txt" in failed.stderr
    assert "--python PATH" in failed.stderr
    assert "a_package_nobody_has" in local.json("dev", "run", folder, code=1)["hint"]

    # A module of the agent's own that is missing is not a matter of installing.
    (folder / "agent" / "main.py").write_text(
        "from agent import missing\n\ndef handle(p):\n    pass\n"
    )
    failed = local("dev", "run", folder)
    assert failed.returncode == 1 and "hint:" not in failed.stderr


def test_logout_revoke_with_the_server_down_keeps_the_login(local, home):
    path = config_file(home)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"url": DOWN, "api_key": "aimos_abcd_secret"}))
    refused = local("logout", "--revoke")
    assert refused.returncode == 5
    assert "could not revoke the key" in refused.stderr
    assert "the login was kept" in refused.stderr
    assert json.loads(path.read_text())["api_key"] == "aimos_abcd_secret"
    body = error_of(local("logout", "--revoke", "--json"))
    assert body["code"] == "unreachable" and path.exists()
    forgot = local("logout")
    assert forgot.returncode == 0 and not path.exists()


def config_file(home: Path) -> Path:
    return home / ".config" / "aimos" / "config.json"


def test_times_are_local_with_their_zone(monkeypatch):
    monkeypatch.setenv("TZ", "XYZ-5:30")  # a zone of UTC+5:30 that needs no zone files
    time.tzset()
    try:
        assert local_time("2025-03-01T10:00:00.123456Z") == "2025-03-01 15:30:00 XYZ"
        assert local_time("2025-03-01T23:45:00+00:00", date=False) == "05:15:00 XYZ"
        assert local_time(None) == ""
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_stored_login_file_keeps_extra_fields(home, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("AIMOS_URL", raising=False)
    config.save("http://h", "aimos_a_b", key_id="k1")
    assert config.load() == {"url": "http://h", "api_key": "aimos_a_b", "key_id": "k1"}
    assert config.resolve().url_source == str(config.config_path())


# --- 10: the build log, a line at a time -----------------------------------------------------


def follow_build(logs: list[str]) -> list[str]:
    """The lines `on_log` hears while a build's log grows through `logs` (the last one as
    the build ended), driving the library's own wait."""
    heard: list[str] = []
    build = wait_for_build(
        str(uuid.uuid4()), 1, on_log=heard.append, timeout=None, raise_on_failure=False, interval=0
    )
    step = next(build)
    for index, log in enumerate(logs):
        assert isinstance(step, Call) and step.method == "GET"
        ended = index == len(logs) - 1
        version = {"status": "ready" if ended else "building", "build_log": log, "version": "v1"}
        try:
            step = build.send(version)
        except StopIteration as stop:
            assert stop.value == version
            return heard
        assert isinstance(step, Sleep)
        step = build.send(None)
    raise AssertionError("the build was still followed after its end")


def test_on_log_hears_each_line_once_however_the_log_grows():
    pieces = ["Coll", "ecting x\nInst", "alling y\r", "\n", "", "Done\n", "Build read", "y"]
    logs, grown = [], ""
    for piece in pieces:
        grown += piece
        logs.append(grown)
    assert follow_build(logs) == ["Collecting x", "Installing y", "Done", "Build ready"]
    # A log written anew (a rebuild) is heard from its start.
    assert follow_build(["a\nb", "c\n", "c\nd\n"]) == ["a", "b", "c", "d"]
    assert follow_build(["", "\n\n"]) == ["", ""]
