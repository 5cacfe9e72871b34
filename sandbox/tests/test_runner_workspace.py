"""`ctx.workspace` of the runner, in a real sandbox started in a session's workspace
(`Backend.start(..., workspace=SessionMount(...))`): files read and written with the session
daemon's confinement rules, and commands run through a real session daemon's socket."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sandbox.base import Status
from sandbox.session import SessionMount
from sandbox.tests.helpers import TEST_LIMITS

AGENT_PATH = Path(__file__).resolve().parent.parent / "session_agent.py"

AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        def handle(payload, ctx):
            # Each step: [method, *args]; the answer is its result or the refusal's code.
            ws = ctx.workspace
            answers = []
            for method, *args in payload:
                try:
                    result = getattr(ws, method)(*args)
                    if isinstance(result, bytes):
                        result = {"bytes": result.hex()}
                    answers.append({"ok": result})
                except ws.Error as exc:
                    answers.append({"code": exc.code, "message": exc.message})
            return answers


        def no_session(payload, ctx):
            try:
                ctx.workspace
            except RuntimeError as exc:
                return str(exc)
            return "no error"
    """,
}


@pytest.fixture(scope="module")
def env(make_agent):
    return make_agent(AGENT)


@pytest.fixture
def session_dirs():
    """A session's workspace (writable by any uid, as the session's default ACL makes it) and
    control directory, and a folder outside both holding a secret."""
    top = Path(tempfile.mkdtemp(prefix="aimos-rw-"))
    top.chmod(0o755)
    workspace, control, outside = top / "workspace", top / "control", top / "outside"
    for folder in (workspace, control, outside):
        folder.mkdir()
    workspace.chmod(0o777)
    control.chmod(0o755)
    (outside / "secret.txt").write_text("host secret")
    outside.chmod(0o777)
    yield workspace, control, outside
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def daemon(session_dirs):
    """A real session daemon serving the workspace on the control directory's socket (as a
    plain process: what is tested here is the run's side of the socket)."""
    workspace, control, _ = session_dirs
    tmp = Path(tempfile.mkdtemp(prefix="aimos-rwt-"))
    command = [sys.executable, "-I", "-S", str(AGENT_PATH), "--socket", str(control / "agent.sock")]
    command += ["--root", str(workspace), "--tmp-dir", str(tmp)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    readable, _, _ = select.select([proc.stdout], [], [], 30)
    assert readable and proc.stdout.readline() == b"ready\n", "the daemon never got ready"
    yield proc
    proc.stdin.close()  # it ends, killing what it started
    proc.wait(30)
    proc.stdout.close()
    shutil.rmtree(tmp, ignore_errors=True)


def run_steps(backend, env, session_dirs, steps, entrypoint="agent.main:handle"):
    workspace, control, _ = session_dirs
    run = backend.start(
        env,
        entrypoint,
        steps,
        limits=TEST_LIMITS,
        workspace=SessionMount(workspace=workspace, control_dir=control),
    )
    try:
        events = list(run.events())
        outcome = run.wait(TEST_LIMITS.timeout_seconds + 15)
    finally:
        run.kill()
    assert outcome.status == Status.COMPLETED, outcome
    return events, outcome.output


def test_a_task_reads_and_writes_the_session_workspace(backend, env, session_dirs):
    workspace, _, _ = session_dirs
    (workspace / "notes.txt").write_text("from the host\n")
    (workspace / "data.bin").write_bytes(b"\x00\xff")
    events, answers = run_steps(
        backend,
        env,
        session_dirs,
        [
            ["read", "notes.txt"],
            ["read_bytes", "./data.bin"],
            ["write", "out/result.txt", "written by the task"],
            ["write", "notes.txt", "changed"],
            ["list", "."],
        ],
    )
    assert answers[0] == {"ok": "from the host\n"}
    assert answers[1] == {"ok": {"bytes": "00ff"}}
    assert answers[2] == {"ok": {"path": "out/result.txt", "size": 19}}
    assert (workspace / "out" / "result.txt").read_text() == "written by the task"
    assert (workspace / "notes.txt").read_text() == "changed"
    listed = {entry["name"]: entry for entry in answers[4]["ok"]}
    if backend.name == "docker":  # a version image's /tmp is a link to /workspace/.tmp
        assert listed.pop(".tmp")["type"] == "directory"
    assert sorted(listed) == ["data.bin", "notes.txt", "out"]
    assert listed["out"]["type"] == "directory"
    assert listed["data.bin"] == {**listed["data.bin"], "type": "file", "size": 2}
    assert [e.data for e in events if e.type == "file_changed"] == [
        {"path": "out/result.txt", "change": "created"},
        {"path": "notes.txt", "change": "modified"},
    ]


def test_paths_out_of_the_workspace_are_refused(backend, env, session_dirs):
    workspace, _, outside = session_dirs
    (workspace / "dir").mkdir()
    os.symlink(outside, workspace / "escape")  # a folder of the host
    os.symlink(outside / "secret.txt", workspace / "secret-link")
    os.symlink("/etc", workspace / "etc")  # a folder inside the sandbox
    os.symlink("/etc/passwd", workspace / "dir" / "passwd")
    os.mkfifo(workspace / "fifo")
    _, answers = run_steps(
        backend,
        env,
        session_dirs,
        [
            ["read", "../outside/secret.txt"],
            ["read", "dir/../../outside/secret.txt"],
            ["read", "/etc/passwd"],
            ["read", ""],
            ["read", "escape/secret.txt"],
            ["read", "secret-link"],
            ["read", "etc/passwd"],
            ["read", "dir/passwd"],
            ["read_bytes", "fifo"],
            ["read", "dir"],
            ["write", "escape/planted.txt", "x"],
            ["write", "secret-link", "overwritten"],
            ["write", "../planted.txt", "x"],
            ["list", "escape"],
            ["list", "etc"],
            ["list", "../"],
            ["read", "missing.txt"],
        ],
    )
    codes = [answer.get("code") for answer in answers]
    assert codes == [
        "invalid_path",
        "invalid_path",
        "invalid_path",
        "invalid_path",
        "symlink",
        "symlink",
        "symlink",
        "symlink",
        "not_a_file",
        "not_a_file",
        "symlink",
        "symlink",
        "invalid_path",
        "symlink",
        "symlink",
        "invalid_path",
        "not_found",
    ], answers
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "host secret"
    assert not (workspace.parent / "planted.txt").exists()


def test_run_goes_through_the_session_daemon(backend, env, session_dirs, daemon):
    workspace, _, _ = session_dirs
    (workspace / "seen-by-ls.txt").write_text("")
    _, answers = run_steps(
        backend,
        env,
        session_dirs,
        [
            ["run", "ls"],
            ["run", "echo out; echo err >&2; exit 3"],
            ["run", "sleep 30", 0.5],
            ["run", "cat made-by-command.txt || echo made > made-by-command.txt"],
            ["read", "made-by-command.txt"],
        ],
    )
    assert answers[0]["ok"]["exit_code"] == 0
    assert "seen-by-ls.txt" in answers[0]["ok"]["stdout"].split()
    assert answers[1]["ok"] == {
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "timed_out": False,
        "truncated": False,
    }
    assert answers[2]["ok"]["timed_out"] is True
    assert answers[4] == {"ok": "made\n"}


def test_run_without_a_daemon_says_the_session_is_unreachable(backend, env, session_dirs):
    _, answers = run_steps(backend, env, session_dirs, [["run", "ls"]])
    assert answers[0]["code"] == "session_unreachable"


def test_outside_a_session_ctx_workspace_raises_a_clear_error(backend, env):
    run = backend.start(env, "agent.main:no_session", None, limits=TEST_LIMITS)
    list(run.events())
    outcome = run.wait(TEST_LIMITS.timeout_seconds + 15)
    assert outcome.status == Status.COMPLETED, outcome
    assert "only available to a task run of a session" in outcome.output
