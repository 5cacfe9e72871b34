"""The session daemon (sandbox/session_agent.py) driven through its client
(sandbox/session_client.py), the daemon started as a plain subprocess (no sandbox).

Synchronisation is on events only: the daemon's `ready` line, replies, log lines, process
exits seen through pidfds, EOF; each wait has a generous bound (WAIT).
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandbox import session_agent
from sandbox.session_client import SessionClient, SessionOpError, SessionUnreachable
from sandbox.tests.helpers import unused_uid

AGENT = Path(__file__).resolve().parents[1] / "session_agent.py"
WAIT = 30.0
MiB = 1024 * 1024
SECRET = b"the host's secret\n"


class Agent:
    """A daemon serving `<base>/ws`, its process logs in `<base>/tmp`; ready once it said so."""

    def __init__(
        self,
        base: Path,
        *args: str,
        python: str = sys.executable,
        prefix: tuple[str, ...] = (),
        **popen_args,
    ) -> None:
        self.root = base / "ws"
        self.tmp = base / "tmp"
        self.socket = base / "agent.sock"
        self.root.mkdir()
        self.tmp.mkdir()
        command = [*prefix, python, "-I", "-S", str(AGENT), "--socket", str(self.socket)]
        command += ["--root", str(self.root), "--tmp-dir", str(self.tmp), *args]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen_args
        )
        readable, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        if not (readable and self.proc.stdout.readline() == b"ready\n"):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the daemon never said it was ready")
        self.client = SessionClient(str(self.socket), timeout=WAIT)

    def stop(self) -> None:
        self.proc.stdin.close()
        if self.proc.poll() is None:
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    started = Agent(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """Starts a daemon with extra command-line arguments."""
    started: list[Agent] = []

    def start(*args: str) -> Agent:
        started.append(Agent(tmp_path, *args))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@pytest.fixture
def client(agent: Agent) -> SessionClient:
    return agent.client


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workspace, holding a secret file."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


def refused(code: str, call: Callable, *args, **kwargs) -> str:
    """Calls, expects a refusal with `code`, returns its message."""
    with pytest.raises(SessionOpError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value
    return caught.value.message


def wait_gone(pid: int, timeout: float = WAIT) -> bool:
    """True once process `pid` exited (a zombie counts as gone), within `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry))
    return members


def first_log_line(client: SessionClient, pid: int) -> str:
    """The first line the background process `pid` printed (waits for it)."""
    text = ""
    logs = client.proc_logs(pid, follow=True)
    try:
        for stream, data in logs:
            assert stream == "log", "the process ended before printing a line"
            text += data
            if "\n" in text:
                return text.split("\n", 1)[0]
    finally:
        logs.close()
    raise AssertionError("no line")


# --- ping, files ---------------------------------------------------------------------


def test_ping_answers_once_ready(client):
    assert client.ping() == {}


def test_written_bytes_read_back_whole_and_in_parts(client, agent):
    data = bytes(range(256)) * 40

    assert client.write("deep/er/file.bin", data) == {"path": "deep/er/file.bin", "size": 10240}

    assert (agent.root / "deep/er/file.bin").read_bytes() == data
    whole = client.read("deep/er/file.bin")
    assert (whole["data"], whole["size"], whole["eof"]) == (data, 10240, True)
    part = client.read("deep/er/file.bin", offset=100, length=50)
    assert (part["data"], part["offset"], part["length"], part["eof"]) == (
        data[100:150],
        100,
        50,
        False,
    )


def test_write_replaces_the_file_keeping_its_mode_and_no_temporary_file(client, agent):
    client.write("run.sh", b"#!/bin/sh\necho one\n")
    (agent.root / "run.sh").chmod(0o755)

    client.write("run.sh", b"#!/bin/sh\necho two\n")

    assert (agent.root / "run.sh").read_bytes() == b"#!/bin/sh\necho two\n"
    assert stat.S_IMODE((agent.root / "run.sh").stat().st_mode) == 0o755
    assert os.listdir(agent.root) == ["run.sh"]


def test_write_without_parents_needs_the_directory(client, agent):
    assert "missing" in refused("not_found", client.write, "missing/f.txt", b"x", parents=False)
    assert not (agent.root / "missing").exists()


def test_write_over_a_directory_or_through_a_file_is_refused(client, agent):
    (agent.root / "d").mkdir()
    (agent.root / "f").write_text("file")

    assert "directory" in refused("not_a_file", client.write, "d", b"x")
    assert "not a directory" in refused("not_a_directory", client.write, "f/x", b"x")


def test_write_over_max_file_bytes_is_too_large(start_agent):
    capped = start_agent("--max-file-bytes", "1000")

    assert capped.client.write("ok.bin", b"x" * 1000)["size"] == 1000
    assert "1001 bytes" in refused("too_large", capped.client.write, "big.bin", b"x" * 1001)
    assert sorted(os.listdir(capped.root)) == ["ok.bin"]


def test_a_file_size_limit_is_too_large_and_the_daemon_lives_on(agent, client):
    resource.prlimit(agent.proc.pid, resource.RLIMIT_FSIZE, (4096, 4096))

    refused("too_large", client.write, "big.bin", b"x" * 10_000)

    assert client.ping() == {}
    assert os.listdir(agent.root) == []  # no temporary file left


def test_the_largest_file_is_written_within_the_sandboxs_data_limit(agent, client):
    """The sandbox's RLIMIT_DATA is its memory (256 MiB by default) and a file may be
    64 MiB (its request 85 MiB of base64): the daemon may hold it only twice or so."""
    resource.prlimit(agent.proc.pid, resource.RLIMIT_DATA, (256 * MiB, 256 * MiB))

    assert client.write("big.bin", b"x" * (64 * MiB))["size"] == 64 * MiB

    assert (agent.root / "big.bin").stat().st_size == 64 * MiB
    assert client.ping() == {}


def test_list_is_sorted_and_typed_without_following_links(client, agent, outside):
    (agent.root / "b.txt").write_bytes(b"12345")
    (agent.root / "a_dir").mkdir()
    (agent.root / "c_link").symlink_to(outside)
    os.mkfifo(agent.root / "d_fifo")

    listed = client.list("")

    assert listed["truncated"] is False
    described = [(e["name"], e["path"], e["type"]) for e in listed["entries"]]
    assert described == [
        ("a_dir", "a_dir", "directory"),
        ("b.txt", "b.txt", "file"),
        ("c_link", "c_link", "symlink"),
        ("d_fifo", "d_fifo", "other"),
    ]
    assert listed["entries"][1]["size"] == 5
    assert listed["entries"][1]["modified"].endswith("+00:00")


def test_list_stops_at_ten_thousand_entries(client, agent):
    (agent.root / "many").mkdir()
    for i in range(10_050):
        (agent.root / "many" / f"f{i:05}").touch()

    listed = client.list("many")

    assert listed["truncated"] is True
    assert len(listed["entries"]) == 10_000
    assert listed["entries"][0]["path"] == "many/f00000"


def test_stat_describes_the_path_itself(client, agent, outside):
    (agent.root / "link").symlink_to(outside / "secret.txt")
    (agent.root / "f.txt").write_text("abc")

    assert client.stat("link")["type"] == "symlink"
    assert client.stat("f.txt")["size"] == 3
    assert client.stat("")["type"] == "directory"
    refused("not_found", client.stat, "nope")


def test_delete_removes_files_and_refuses_a_full_directory_unless_recursive(client, agent):
    (agent.root / "d/e").mkdir(parents=True)
    (agent.root / "d/e/f.txt").write_text("x")
    (agent.root / "g.txt").write_text("x")

    assert client.delete("g.txt") == {}
    assert "not empty" in refused("invalid_request", client.delete, "d")
    assert (agent.root / "d/e/f.txt").exists()
    assert client.delete("d", recursive=True) == {}
    assert os.listdir(agent.root) == []
    refused("not_found", client.delete, "g.txt")
    refused("invalid_path", client.delete, "")


def test_delete_never_follows_links(client, agent, outside):
    (agent.root / "to_outside").symlink_to(outside)
    (agent.root / "tree").mkdir()
    (agent.root / "tree/inner_link").symlink_to(outside)

    client.delete("to_outside")
    client.delete("tree", recursive=True)

    assert os.listdir(agent.root) == []
    assert (outside / "secret.txt").read_bytes() == SECRET


def test_mkdir_makes_parents_and_says_when_it_exists(client, agent):
    assert client.mkdir("a/b/c") == {}
    assert client.mkdir("a/b/c") == {}  # parents: an existing directory is fine

    assert (agent.root / "a/b/c").is_dir()
    refused("exists", client.mkdir, "a/b/c", parents=False)
    refused("not_found", client.mkdir, "x/y", parents=False)
    (agent.root / "file").write_text("x")
    refused("not_a_directory", client.mkdir, "file/sub")


def test_usage_counts_the_bytes_used(client):
    usage = client.usage()

    assert usage["bytes"] > 0
    assert usage["total_bytes"] >= usage["bytes"]


# --- confinement -----------------------------------------------------------------------

BAD_PATHS = [
    ("../x", "'..'"),
    ("/etc/passwd", "absolute"),
    ("a/../../x", "'..'"),
    ("a\0b", "NUL"),
    ("x/" * 2100, "longer than"),
]


@pytest.mark.parametrize(("path", "named"), BAD_PATHS)
def test_paths_leaving_the_workspace_are_invalid(client, path, named):
    for call in (client.read, client.list, client.stat, client.delete, client.mkdir):
        assert named in refused("invalid_path", call, path)
    assert named in refused("invalid_path", client.write, path, b"x")
    assert named in refused("invalid_path", client.exec, "true", cwd=path)


def test_a_symlink_as_a_component_is_never_followed(client, agent, outside):
    (agent.root / "link").symlink_to(outside)

    assert "symbolic link" in refused("symlink", client.read, "link/secret.txt")
    refused("symlink", client.write, "link/new.txt", b"x")
    refused("symlink", client.list, "link")
    refused("symlink", client.mkdir, "link/sub")
    refused("symlink", client.exec, "pwd", cwd="link")
    assert os.listdir(outside) == ["secret.txt"]


def test_a_symlink_as_the_target_is_never_followed(client, agent, outside):
    (agent.root / "s.txt").symlink_to(outside / "secret.txt")

    assert "s.txt" in refused("symlink", client.read, "s.txt")
    refused("symlink", client.write, "s.txt", b"overwritten")
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert (agent.root / "s.txt").is_symlink()


def test_a_directory_swapped_for_a_symlink_between_requests_is_refused(client, agent, outside):
    (agent.root / "d").mkdir()
    (agent.root / "d/secret.txt").write_bytes(b"inside\n")
    assert client.read("d/secret.txt")["data"] == b"inside\n"

    (agent.root / "d/secret.txt").unlink()
    (agent.root / "d").rmdir()
    (agent.root / "d").symlink_to(outside)

    refused("symlink", client.read, "d/secret.txt")


def test_racing_swaps_never_reach_outside(client, agent, outside):
    """A directory flips with a symlink to outside while it is read, again and again."""
    real, link = agent.root / "d", agent.root / "d_link"
    real.mkdir()
    (real / "secret.txt").write_bytes(b"inside\n")
    link.symlink_to(outside)
    done = threading.Event()

    def flip() -> None:
        while not done.is_set():
            real.rename(agent.root / "d_real")
            link.rename(real)
            real.rename(link)
            (agent.root / "d_real").rename(real)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = set()
    try:
        for _ in range(1000):
            try:
                outcomes.add(client.read("d/secret.txt")["data"])
            except SessionOpError as exc:
                outcomes.add(exc.code)
    finally:
        done.set()
        flipper.join(WAIT)
    assert SECRET not in outcomes
    # not_a_directory: a link met by the open, a directory again by the check after it
    assert outcomes <= {b"inside\n", "symlink", "not_found", "not_a_directory"}


def test_a_command_runs_in_the_directory_checked_though_a_link_replaced_it(
    tmp_path, outside, monkeypatch
):
    """The cwd is checked (no link on the way), then the shell starts: a link swapped in for
    its path meanwhile is not followed. The daemon runs in this process, so the swap is made
    right before the spawn."""
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    argv = ["--socket", str(tmp_path / "unused.sock"), "--root", str(root)]
    daemon = session_agent.Daemon(session_agent.parse_args(argv))
    spawn = daemon.groups.spawn

    def swap_then_spawn(command, **popen_args):
        (root / "d").rename(root / "moved")
        (root / "d").symlink_to(outside)
        return spawn(command, **popen_args)

    monkeypatch.setattr(daemon.groups, "spawn", swap_then_spawn)
    ours, theirs = socket.socketpair()
    try:
        ran = daemon.op_exec({"command": "ls; pwd", "cwd": "d"}, session_agent.Connection(ours))
    finally:
        ours.close()
        theirs.close()
        os.close(daemon.tree.root_fd)

    assert ran["stdout"] == f"{root}/moved\n"


def test_a_fifo_is_not_a_file_and_never_blocks(agent, tmp_path):
    impatient = SessionClient(str(agent.socket), timeout=5)
    os.mkfifo(agent.root / "pipe")

    assert "FIFO" in refused("not_a_file", impatient.read, "pipe")
    refused("not_a_file", impatient.write, "pipe", b"x")


def test_a_fifo_swapped_in_while_reading_never_blocks(agent):
    impatient = SessionClient(str(agent.socket), timeout=5)
    target = agent.root / "f"
    target.write_bytes(b"regular\n")
    done = threading.Event()

    def flip() -> None:
        while not done.is_set():
            os.mkfifo(agent.root / "f.fifo")
            (agent.root / "f.fifo").replace(target)
            (agent.root / "f.reg").write_bytes(b"regular\n")
            (agent.root / "f.reg").replace(target)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = set()
    try:
        for _ in range(500):
            try:
                outcomes.add(impatient.read("f")["data"])
            except SessionOpError as exc:
                outcomes.add(exc.code)
    finally:
        done.set()
        flipper.join(WAIT)
    assert outcomes <= {b"regular\n", "not_a_file"}


def test_sockets_and_devices_are_not_files(client, agent):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(agent.root / "sock"))
    try:
        assert "socket" in refused("not_a_file", client.read, "sock")
    finally:
        listener.close()
    try:
        os.mknod(agent.root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot make a device node here")
    assert "device" in refused("not_a_file", client.read, "null")
    refused("not_a_file", client.write, "null", b"x")


def test_a_hard_link_is_the_file_itself_and_a_write_replaces_only_the_name(client, agent, outside):
    """On the real workspace disk (a filesystem of its own) no hard link to a file outside
    can exist; here, on one filesystem, it reads as the file and a write unlinks it."""
    os.link(outside / "secret.txt", agent.root / "hard.txt")

    assert client.read("hard.txt")["data"] == SECRET
    client.write("hard.txt", b"replaced\n")

    assert (outside / "secret.txt").read_bytes() == SECRET
    assert (agent.root / "hard.txt").read_bytes() == b"replaced\n"


# --- glob, grep ------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_glob_matches_names_anywhere_and_paths_with_double_star(client, agent, outside):
    make_tree(agent.root, {"a.py": b"", "src/b.py": b"", "src/pkg/c.py": b"", "src/d.txt": b""})
    (agent.root / "src/out").symlink_to(outside)

    assert client.glob("*.py")["matches"] == ["a.py", "src/b.py", "src/pkg/c.py"]
    assert client.glob("src/**/*.py")["matches"] == ["src/b.py", "src/pkg/c.py"]
    assert client.glob("*/*.py")["matches"] == ["src/b.py"]
    assert client.glob("*.py", path="src/pkg")["matches"] == ["src/pkg/c.py"]
    assert client.glob("**")["matches"] == [
        "a.py", "src", "src/b.py", "src/d.txt", "src/out", "src/pkg", "src/pkg/c.py"
    ]  # fmt: skip


def test_glob_stops_at_its_limit(client, agent):
    make_tree(agent.root, {f"f{i}.txt": b"" for i in range(20)})

    found = client.glob("*.txt", limit=5)

    assert len(found["matches"]) == 5
    assert found["truncated"] is True


def test_grep_finds_lines_in_text_files_only(client, agent):
    make_tree(
        agent.root,
        {
            "a.txt": b"first\nHello world\nlast\n",
            "b.py": b"hello = 1\n",
            "bin.dat": b"\0\0hello\n",
            "big.txt": b"hello\n" + b"x" * 2000,
        },
    )

    found = client.grep("hello", ignore_case=True, max_file_bytes=1000)

    assert found["matches"] == [
        {"path": "a.txt", "line": 2, "text": "Hello world"},
        {"path": "b.py", "line": 1, "text": "hello = 1"},
    ]
    assert (found["binary_skipped"], found["large_skipped"], found["files_searched"]) == (1, 1, 2)
    assert client.grep("hello", glob="*.py")["matches"] == [
        {"path": "b.py", "line": 1, "text": "hello = 1"}
    ]
    assert client.grep("world", max_line_chars=3)["matches"][0]["text"] == "Hel"


def test_grep_searches_one_file_or_names_what_is_missing(client, agent):
    make_tree(agent.root, {"src/a.txt": b"needle\n", "src/b.txt": b"needle\n"})

    assert [m["path"] for m in client.grep("needle", path="src/b.txt")["matches"]] == ["src/b.txt"]
    assert "nowhere" in refused("not_found", client.grep, "needle", path="nowhere")


def test_grep_refuses_a_broken_pattern(client):
    assert "pattern" in refused("invalid_pattern", client.grep, "(unclosed")


def test_grep_over_a_large_tree_stops_at_max_matches(client, agent):
    make_tree(agent.root, {f"d{i // 100}/f{i}.txt": b"one needle here\n" for i in range(3000)})

    assert len(client.grep("needle", max_matches=5000)["matches"]) == 3000
    found = client.grep("needle", max_matches=50)

    assert len(found["matches"]) == 50
    assert found["truncated"] is True
    assert found["files_searched"] <= 51


def test_grep_with_a_runaway_pattern_ends_at_its_time_limit(client, agent):
    (agent.root / "evil.txt").write_bytes(b"a" * 40 + b"!\n")  # (a+)+$ backtracks 2**40 times
    started = time.monotonic()

    found = client.grep("(a+)+$", max_seconds=1)

    assert found["timed_out"] is True
    assert time.monotonic() - started < 10
    assert client.ping() == {}
    assert all(wait_gone(pid) for pid in grep_workers(agent.root))


def test_a_grep_killed_at_its_time_limit_answers_every_field(client, agent):
    (agent.root / "evil.txt").write_bytes(b"a" * 40 + b"!\n")

    found = client.grep("(a+)+$", max_seconds=0.01)

    assert found == {
        "matches": [],
        "truncated": False,
        "timed_out": True,
        "files_searched": 0,
        "binary_skipped": 0,
        "large_skipped": 0,
    }


def grep_workers(root: Path) -> list[int]:
    """Processes whose command line is a grep worker of the workspace `root`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--grep-worker" in argv and str(root).encode() in argv:
            found.append(int(pid))
    return found


# --- exec ------------------------------------------------------------------------------


def test_exec_returns_exit_code_and_output(client, agent):
    (agent.root / "sub").mkdir()

    done = client.exec("echo out; echo err >&2; exit 3")
    where = client.exec("pwd", cwd="sub")

    assert (done["exit_code"], done["stdout"], done["stderr"]) == (3, "out\n", "err\n")
    assert (done["timed_out"], done["truncated"]) == (False, False)
    assert where["stdout"] == f"{agent.root}/sub\n"
    refused("not_found", client.exec, "pwd", cwd="missing")


def test_exec_timeout_kills_the_whole_group(client):
    done = client.exec("echo $$; sleep 1000 & echo $!; sleep 1000 & echo $!; wait", timeout=1)

    assert done["timed_out"] is True
    pids = [int(pid) for pid in done["stdout"].split()]
    assert len(pids) == 3
    assert all(wait_gone(pid) for pid in pids)


def test_exec_kills_what_the_shell_left_behind(client):
    done = client.exec("sleep 1000 & echo $!", timeout=WAIT)

    assert (done["exit_code"], done["timed_out"]) == (0, False)
    assert wait_gone(int(done["stdout"]))


def test_exec_of_a_command_that_closed_its_output_still_times_out(client):
    started = time.monotonic()

    done = client.exec("exec >&- 2>&-; sleep 1000", timeout=1)

    assert done["timed_out"] is True
    assert time.monotonic() - started < 10


def test_a_fork_loop_ends_at_the_timeout(client):
    done = client.exec("echo $$; while :; do sleep 1000 & done", timeout=0.5)

    assert done["timed_out"] is True
    pgid = int(done["stdout"].split()[0])
    assert all(wait_gone(pid) for pid in group_members(pgid))
    assert group_members(pgid) == []


def test_an_output_flood_is_capped_then_killed(client):
    started = time.monotonic()

    done = client.exec("yes", max_output_bytes=65536, timeout=WAIT)

    assert len(done["stdout"]) == 65536
    assert done["truncated"] is True
    assert done["exit_code"] < 0  # killed, long before the timeout
    assert time.monotonic() - started < WAIT


def test_exec_stream_sends_output_as_it_comes_then_the_result(client):
    chunks = list(client.exec_stream("echo out; echo err >&2; exit 3"))

    assert chunks[-1][0] == "result"
    assert chunks[-1][1]["exit_code"] == 3
    assert "".join(d for s, d in chunks if s == "stdout") == "out\n"
    assert "".join(d for s, d in chunks if s == "stderr") == "err\n"


def test_leaving_an_exec_stream_kills_its_processes(client):
    chunks = client.exec_stream("sleep 1000 & echo $$ $!; wait", timeout=600)
    stream, text = next(chunks)
    assert stream == "stdout"

    chunks.close()

    assert all(wait_gone(int(pid)) for pid in text.split())


# --- background processes --------------------------------------------------------------


def test_a_background_process_is_listed_logged_and_stopped(client):
    started = client.proc_start("echo hello; sleep 1000", name="server")
    pid = started["pid"]
    assert (started["status"], started["name"]) == ("running", "server")

    assert first_log_line(client, pid) == "hello"
    assert client.proc_logs(pid) == {"lines": ["hello"]}
    listed = client.proc_list()["processes"]
    assert [(p["pid"], p["status"]) for p in listed] == [(pid, "running")]

    stopped = client.proc_stop(pid)

    assert stopped["status"] == "killed"
    assert stopped["ended_at"] is not None
    assert wait_gone(pid)
    assert client.proc_list()["processes"][0]["status"] == "killed"
    chunks = list(client.proc_logs(pid, follow=True))
    assert chunks == [("log", "hello\n"), ("result", stopped)]


def test_following_logs_ends_with_the_process(client):
    started = client.proc_start("echo one; echo two; exit 4")

    chunks = list(client.proc_logs(started["pid"], follow=True))

    assert "".join(d for s, d in chunks if s == "log") == "one\ntwo\n"
    assert chunks[-1][0] == "result"
    assert (chunks[-1][1]["status"], chunks[-1][1]["exit_code"]) == ("exited", 4)


def test_stop_kills_a_process_that_ignores_sigterm(client):
    pid = client.proc_start("trap '' TERM; echo ready; sleep 1000 & wait")["pid"]
    assert first_log_line(client, pid) == "ready"

    stopped = client.proc_stop(pid, timeout=0.5)

    assert (stopped["status"], stopped["exit_code"]) == ("killed", -signal.SIGKILL)


def test_process_logs_are_capped(client, agent):
    pid = client.proc_start("yes 0123456789 | head -c 20000000")["pid"]

    final = list(client.proc_logs(pid, tail=0, follow=True))[-1]

    assert final[1]["status"] == "exited"
    logs = agent.tmp / "aimos-procs"
    assert sum(f.stat().st_size for f in logs.iterdir()) <= 8 * MiB
    # 20,000,000 bytes: whole lines of 11 bytes, then 9 bytes without a newline
    assert client.proc_logs(pid, tail=3)["lines"] == ["0123456789"] * 2 + ["012345678"]


def test_unknown_processes_are_not_found(client):
    refused("no_such_process", client.proc_stop, 999_999)
    refused("no_such_process", client.proc_logs, 999_999)


def test_a_leader_reaped_already_never_has_its_group_killed(monkeypatch):
    """communicate() reaps grep's worker before Groups.reap: its pid is free from then on,
    maybe another group's, and must not be killed."""
    groups = session_agent.Groups(limit=1)
    proc = groups.spawn(["true"])
    proc.wait()
    killed = []
    monkeypatch.setattr(session_agent.os, "killpg", lambda pgid, signum: killed.append(pgid))

    assert groups.reap(proc) == 0

    assert killed == []
    assert groups.live == set()


def test_too_many_processes_is_busy(start_agent):
    small = start_agent("--max-processes", "2")
    first = small.client.proc_start("sleep 1000")["pid"]
    small.client.proc_start("sleep 1000")

    refused("busy", small.client.proc_start, "sleep 1000")
    refused("busy", small.client.exec, "true")
    small.client.proc_stop(first)
    assert small.client.exec("echo fine")["stdout"] == "fine\n"


def test_too_many_connections_is_busy(start_agent):
    small = start_agent("--max-connections", "2")
    idle = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    for sock in idle:
        sock.connect(str(small.socket))
    try:
        refused("busy", small.client.ping)
    finally:
        for sock in idle:
            sock.close()


def tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
                count += int(status.split("\nUid:")[1].split()[0]) == uid
        except (OSError, IndexError):
            continue
    return count


def test_a_daemon_out_of_file_descriptors_serves_again_once_it_has_some(agent):
    pid = agent.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(in_use) + 1)) - in_use)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))  # accept: EMFILE
    impatient = SessionClient(str(agent.socket), timeout=0.5)
    try:  # an accept() already waiting reserved its fd before the limit: let it be used
        impatient.ping()
    except SessionUnreachable:
        pass

    with pytest.raises(SessionUnreachable, match="in time"):
        impatient.ping()

    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert agent.client.ping() == {}


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK) or not shutil.which("prlimit"),
    reason="needs root, a system Python and prlimit to run the daemon as another user",
)
def test_a_daemon_that_cannot_start_threads_answers_busy_then_recovers():
    """Threads count against the sandbox's process limit (RLIMIT_NPROC here): at the limit
    a connection is refused (busy) and the daemon serves again once there is room."""
    base = Path(tempfile.mkdtemp(prefix="session-agent-", dir="/tmp"))
    base.chmod(0o777)
    uid = unused_uid()  # of this test's own: no other process counts against its limit
    limit = tasks_of_uid(uid) + 3  # the daemon's main and accept threads, and one more
    agent = Agent(
        base,
        python=SYSTEM_PYTHON,
        prefix=("prlimit", f"--nproc={limit}:{limit}", "--"),
        user=uid,
        group=uid,
    )
    filler = subprocess.Popen(["sleep", "1000"], user=uid, group=uid)
    try:
        assert "too many processes" in refused("busy", agent.client.ping)

        filler.kill()
        filler.wait()
        assert agent.client.ping() == {}
    finally:
        filler.kill()
        filler.wait()
        agent.stop()
        shutil.rmtree(base)


@pytest.mark.parametrize("how", ["stdin_eof", "sigterm"])
def test_every_process_dies_with_the_daemon(tmp_path, how):
    agent = Agent(tmp_path)
    try:
        shell = agent.client.proc_start("sleep 1000 & echo $!; wait")["pid"]
        child = int(first_log_line(agent.client, shell))
        plain = agent.client.proc_start("sleep 1000")["pid"]

        if how == "stdin_eof":
            agent.proc.stdin.close()
        else:
            agent.proc.send_signal(signal.SIGTERM)

        assert agent.proc.wait(WAIT) == 0
        assert all(wait_gone(pid) for pid in (shell, child, plain))
        assert not agent.socket.exists()
    finally:
        agent.stop()


# --- requests the daemon refuses -------------------------------------------------------


def raw_request(agent: Agent, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(agent.socket))
        sock.sendall(line)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_request_that_is_not_json_is_invalid(agent):
    assert b'"code": "invalid_request"' in raw_request(agent, b"hello\n")
    assert b"unknown op" in raw_request(agent, b'{"op": "format_disk"}\n')


def test_fields_of_the_wrong_type_or_range_are_invalid(client):
    assert "'offset'" in refused("invalid_request", client.read, "f", offset=-1)
    assert "'length'" in refused("invalid_request", client.read, "f", length=9 * MiB)
    assert "'timeout'" in refused("invalid_request", client.exec, "true", timeout=0)


# --- the client against a daemon that misbehaves ---------------------------------------


@contextmanager
def fake_daemon(path: Path, behave: Callable[[socket.socket], None]) -> Iterator[None]:
    """A server on `path` that reads one request and then does `behave(connection)`."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                behave(conn)
            except OSError:
                pass  # the client hung up, as it should

    server = threading.Thread(target=serve)
    server.start()
    try:
        yield
    finally:
        server.join(WAIT)
        listener.close()
        assert not server.is_alive()


def flood(conn: socket.socket) -> None:
    block = b"x" * MiB
    for _ in range(100):
        conn.sendall(block)


def test_an_endless_reply_line_is_refused_without_eating_memory(tmp_path):
    path = tmp_path / "fake.sock"
    with fake_daemon(path, flood):
        tracemalloc.start()
        try:
            with pytest.raises(SessionUnreachable, match="over"):
                SessionClient(str(path), timeout=WAIT).ping()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 40 * MiB


@pytest.mark.parametrize(
    "reply",
    [b"this is not json\n", b"[1, 2]\n", b'{"ok": "yes"}\n', b'{"ok": false}\n', b'{"ok": tr'],
)
def test_a_reply_off_the_protocol_is_unreachable(tmp_path, reply):
    path = tmp_path / "fake.sock"
    with fake_daemon(path, lambda conn: conn.sendall(reply)):
        with pytest.raises(SessionUnreachable):
            SessionClient(str(path), timeout=WAIT).ping()


def test_a_silent_daemon_times_out(tmp_path):
    path = tmp_path / "fake.sock"
    started = time.monotonic()
    with fake_daemon(path, lambda conn: conn.recv(1)):  # until the client hangs up
        with pytest.raises(SessionUnreachable, match="in time"):
            SessionClient(str(path), timeout=0.5).ping()
    assert time.monotonic() - started < 10


def test_a_missing_socket_is_unreachable(tmp_path):
    with pytest.raises(SessionUnreachable):
        SessionClient(str(tmp_path / "none.sock")).ping()


def test_a_dead_daemon_is_unreachable(tmp_path):
    agent = Agent(tmp_path)
    agent.stop()
    with pytest.raises(SessionUnreachable):
        agent.client.ping()


def test_a_socket_that_is_a_link_is_never_followed(tmp_path):
    """The daemon's side can put a link where its socket was: to another session's daemon,
    say. The web process (root) must not connect through it."""
    other = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(other))
        listener.listen(1)
        listener.setblocking(False)
        (tmp_path / "agent.sock").symlink_to(other)

        with pytest.raises(SessionUnreachable, match="not a socket"):
            SessionClient(str(tmp_path / "agent.sock"), timeout=5).ping()

        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


def test_a_line_of_too_many_values_is_refused_without_eating_memory(tmp_path):
    """16 MiB of `[],` would parse into 5 million lists (~400 MiB)."""
    path = tmp_path / "fake.sock"
    line = b'{"ok": true, "entries": [' + b"[]," * 5_000_000 + b'[]], "truncated": false}\n'
    with fake_daemon(path, lambda conn: conn.sendall(line)):
        tracemalloc.start()
        try:
            with pytest.raises(SessionUnreachable, match="values"):
                SessionClient(str(path), timeout=WAIT).list()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 64 * MiB


def test_output_full_of_json_punctuation_is_not_mistaken_for_values(client):
    """The values of a line are counted outside its strings: 1 MB of `,[{:` is one string."""
    done = client.exec("yes ',[{:' | head -c 1000000")

    assert done["stdout"] == ",[{:\n" * 200_000


WRONG_SHAPES = {
    "a field missing": (lambda c: c.list(), b'{"ok": true}'),
    "an item of the wrong type": (
        lambda c: c.list(),
        b'{"ok": true, "entries": [{"name": 1}], "truncated": false}',
    ),
    "a boolean for a number": (
        lambda c: c.stat("f"),
        b'{"ok": true, "name": "f", "path": "f", "type": "file", "size": true, "modified": "t"}',
    ),
    "a string for a number": (
        lambda c: c.exec("x"),
        b'{"ok": true, "exit_code": "0", "stdout": "", "stderr": "", "timed_out": false, '
        b'"truncated": false}',
    ),
    "nested lists for strings": (
        lambda c: c.glob("*"),
        b'{"ok": true, "matches": [' + b"[" * 100 + b"]" * 100 + b'], "truncated": false}',
    ),
    "more bytes than asked": (
        lambda c: c.read("f", length=2),
        b'{"ok": true, "data": "eHh4eA==", "size": 4, "offset": 0, "length": 4, "eof": true}',
    ),
    "an encoded surrogate": (lambda c: c.ping(), b'{"ok": true, "x": "\xed\xa0\x80"}'),
}


@pytest.mark.parametrize(("call", "reply"), WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_result_of_the_wrong_shape_is_unreachable(tmp_path, call, reply):
    path = tmp_path / "fake.sock"
    with fake_daemon(path, lambda conn: conn.sendall(reply + b"\n")):
        with pytest.raises(SessionUnreachable, match="wrong shape|more data|not JSON"):
            call(SessionClient(str(path), timeout=WAIT))


def test_results_keep_only_their_fields_as_text_that_can_be_encoded(tmp_path):
    path = tmp_path / "fake.sock"
    entry = b'{"name": "\\udcff", "path": "\\udcff", "type": "file", "size": 1, "modified": "t"}'
    reply = b'{"ok": true, "entries": [' + entry + b'], "truncated": false, "deep": [[[[]]]]}\n'
    with fake_daemon(path, lambda conn: conn.sendall(reply)):
        listed = SessionClient(str(path), timeout=WAIT).list()
    other = tmp_path / "other.sock"
    refusal = b'{"ok": false, "code": "not_found", "error": "\\ud800 is gone"}\n'
    with fake_daemon(other, lambda conn: conn.sendall(refusal)):
        message = refused("not_found", SessionClient(str(other), timeout=WAIT).ping)

    assert set(listed) == {"entries", "truncated"}
    assert listed["entries"][0]["name"] == "\ufffd"
    assert message == "\ufffd is gone"
