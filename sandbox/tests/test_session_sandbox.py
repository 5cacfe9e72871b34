"""Session sandboxes (`Backend.start_session`) and task runs in a session's workspace
(`Backend.start(..., workspace=)`) on both backends, real sandboxes on real workspace disks.

The walls are climbed from inside, through the daemon's `exec`: nothing here sends a packet
off this machine (the sandbox has only its own loopback; connections to this host's
addresses fail before a packet leaves). Synchronisation is on events: `start_session`
returns once the daemon said `ready`, replies, the end of a run, a killed host's exit.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.base import (
    Environment,
    Limits,
    SandboxUnavailable,
    SessionMount,
    SessionSpec,
    Status,
)
from sandbox.confinement import UID_LOCK_DIR, pids_of_uid
from sandbox.docker_backend import LABEL_SESSION
from sandbox.egress import host_addresses
from sandbox.process_backend import ProcessBackend
from sandbox.session import give_control_dir, release_control_dir, seal_control_dir
from sandbox.session_client import SessionClient, SessionUnreachable
from sandbox.tests.helpers import (
    TEST_LIMITS,
    frozen,
    processes_with,
    started_with,
    token,
    unused_uid,
)
from sandbox.workspace_disk import WorkspaceDisk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="sessions need root (disks, sandboxes)"),
]

SESSION_LIMITS = Limits(
    memory_mb=128, cpus=1.0, pids=32, max_file_mb=8, max_open_files=128, workspace_mb=8
)
WAIT = 30.0
# A background process whose command line carries a marker (its last argument).
SLEEPER = "python3 -c 'import time; time.sleep(1000)'"


@pytest.fixture
def make_session(backend, tmp_path):
    """`make_session(name, limits=, env=)` → (sandbox, client, disk): a session of its own
    disk (16 MB) and control directory; every sandbox stopped and disk removed at the end."""
    made: list = []
    disks: dict[str, WorkspaceDisk] = {}

    def make(name: str = "s", *, limits: Limits = SESSION_LIMITS, env=None):
        if name not in disks:
            disks[name] = WorkspaceDisk(tmp_path / name, 16)
        disk = disks[name]
        control = tmp_path / name / "control"
        control.mkdir(parents=True, exist_ok=True)
        spec = SessionSpec(f"{name}-{token()}", disk.ensure(), control, limits, env)
        sandbox = backend.start_session(spec)
        made.append(sandbox)
        return sandbox, SessionClient(str(sandbox.socket_path)), disk

    yield make
    for sandbox in made:
        sandbox.stop()
    for disk in disks.values():
        disk.remove()


def run_python(client: SessionClient, code: str, timeout: float = 30) -> dict:
    """Run `code` with the sandbox's python3 through the daemon; its stdout parsed as JSON."""
    result = client.exec(f"python3 -c {shlex.quote(textwrap.dedent(code))}", timeout=timeout)
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"])


def session_containers(request, session_id: str) -> list:
    """The engine's containers of the session (the engine fixture: docker tests only)."""
    engine = request.getfixturevalue("engine")
    return engine.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session_id}"})


def own_address() -> str:
    for address in sorted(host_addresses(), key=str):
        if address.version == 4 and not address.is_loopback:
            return str(address)
    pytest.skip("this host has no non-loopback IPv4 address")


def test_the_daemon_answers_and_its_files_outlive_the_sandbox(make_session):
    sandbox, client, disk = make_session()
    assert sandbox.alive() and client.ping() == {}

    client.write("notes/hello.txt", b"kept across sandboxes")
    assert (disk.workspace / "notes/hello.txt").read_bytes() == b"kept across sandboxes"
    sandbox.stop()
    assert not sandbox.alive()
    with pytest.raises(SessionUnreachable):
        client.ping()

    _, again, _ = make_session()  # a new sandbox on the same disk
    assert again.read("notes/hello.txt")["data"] == b"kept across sandboxes"


WALLS = """
import errno, json, os, socket

def connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)

def route(host):
    # A UDP connect only looks the route up: nothing is sent, whatever the answer.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return "routed"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, type(exc).__name__)

def write(path):
    try:
        with open(path, "w") as out:
            out.write("x")
        return "written"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)

status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
print(json.dumps({
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "loopback": connect("127.0.0.1", %(port)d),
    "host": connect("%(host)s", %(port)d),
    "elsewhere": route("10.255.255.1"),
    "visible": [p for p in %(paths)r if os.path.exists(p)],
    "usr_read_only": bool(os.statvfs("/usr").f_flag & os.ST_RDONLY),
    "root_read_only": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "usr_write": write("/usr/planted"),
    "uid": os.getuid(),
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "tmp_is_workspace": os.stat("/tmp").st_dev == os.stat("/workspace").st_dev,
    "home": os.environ.get("HOME"),
}))
"""


def test_the_walls_of_a_run_hold_inside_a_session(make_session, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for sandboxes")
    other, other_client, other_disk = make_session("other")
    other_client.write("other-session.txt", b"private")
    _, client, disk = make_session()
    paths = [str(secret), str(other_disk.workspace), str(disk.workspace), "/work", "/root/.ssh"]
    paths.append(str(Path(__file__).resolve()))

    found = run_python(client, WALLS % {"port": port, "host": own_address(), "paths": paths})

    assert found["interfaces"] == ["lo"]
    assert found["loopback"] == "ECONNREFUSED"  # its own loopback, not this host's
    assert found["host"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert found["elsewhere"] in ("ENETUNREACH", "EHOSTUNREACH")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came
    listener.close()
    assert found["visible"] == []
    assert found["usr_read_only"] and found["root_read_only"]
    assert found["usr_write"] in ("EROFS", "EACCES")
    assert found["uid"] != 0 and found["cap_eff"] == "0000000000000000"
    assert found["no_new_privs"] == "1"
    assert not found["tmp_is_workspace"]
    assert found["home"] == "/workspace"
    listing = client.exec("ls -a /workspace")["stdout"].split()
    assert "other-session.txt" not in listing
    assert other.alive()


FORK_BOMB = """
import errno, json, os, time
children, problem = [], None
for _ in range(10_000):
    try:
        pid = os.fork()
    except OSError as exc:
        problem = errno.errorcode.get(exc.errno)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(children), "problem": problem}))
"""

HOG = """
import json
try:
    hog = b"x" * (1024 * 1024 * 1024)  # written, so the pages are really taken
    print(json.dumps({"allocated": len(hog)}))
except MemoryError:
    print(json.dumps({"allocated": 0}))
"""


def test_a_fork_bomb_and_a_memory_hog_are_bounded_and_the_daemon_lives_on(make_session):
    _, client, _ = make_session()

    bomb = run_python(client, FORK_BOMB)
    hog = client.exec(f"python3 -c {shlex.quote(HOG)}", timeout=30)

    assert bomb["problem"] == "EAGAIN" and bomb["forked"] < SESSION_LIMITS.pids
    # A MemoryError (the address-space limit) or the kernel's OOM killer (the cgroup).
    assert hog["exit_code"] in (0, -9, 137), hog
    assert '"allocated": 1073741824' not in hog["stdout"]
    assert client.ping() == {}


def test_stop_kills_background_processes_and_leaves_nothing(make_session, backend, request):
    sandbox, client, disk = make_session()
    marker = token()
    started = client.proc_start(f"exec {SLEEPER} {marker}", name="sleeper")
    assert client.proc_list()["processes"][0]["pid"] == started["pid"]
    assert started_with(marker)

    sandbox.stop()

    assert processes_with(marker) == []
    assert not sandbox.alive()
    assert not sandbox.socket_path.exists()
    if backend.name == "process":
        assert pids_of_uid(sandbox.uid) == []
        assert not sandbox.run_dir.exists()
        cgroups = sandbox.members.cgroups
        assert cgroups is not None and not any(p.exists() for p in cgroups.dirs.values())
        lock = os.open(UID_LOCK_DIR / f"{sandbox.uid}.lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the uid is free again
        finally:
            os.close(lock)
    else:
        assert session_containers(request, sandbox.spec.session_id) == []
    assert disk.mounted()  # the workspace is the caller's to unmount
    sandbox.stop()  # again: nothing to do


def test_a_paused_session_is_frozen_until_resumed_and_stops_as_any(make_session, backend, request):
    sandbox, client, _ = make_session()
    marker = token()
    client.proc_start(f"exec {SLEEPER} {marker}", name="sleeper")
    started_with(marker)

    sandbox.pause()
    sandbox.pause()  # again: nothing to do

    if backend.name == "process":
        pids = processes_with(marker) + pids_of_uid(sandbox.uid)
        assert pids and all(frozen(pid) for pid in pids)
    else:
        [container] = session_containers(request, sandbox.spec.session_id)
        assert container.status == "paused"
    assert sandbox.alive()

    sandbox.resume()
    assert client.ping() == {}
    assert [p["status"] for p in client.proc_list()["processes"]] == ["running"]
    if backend.name == "process":
        assert not any(frozen(pid) for pid in pids_of_uid(sandbox.uid))

    sandbox.pause()
    sandbox.stop()  # thawed first: its processes end, nothing is left
    assert processes_with(marker) == []
    assert not sandbox.alive()
    if backend.name == "docker":
        assert session_containers(request, sandbox.spec.session_id) == []
    sandbox.resume()  # after a stop: nothing to do


HOARD = """
import errno, os, sys
fd = os.open(os.path.join(sys.argv[1], "hoard"), os.O_WRONLY | os.O_CREAT, 0o600)
os.unlink(os.path.join(sys.argv[1], "hoard"))  # gone from the folder, kept open
written = 0
try:
    while written < 8 * 1024 * 1024:
        written += os.write(fd, b"x" * 65536)
    print("wrote", written)
except OSError as exc:
    print(errno.errorcode[exc.errno], written)
"""


def test_a_daemon_cannot_grow_a_file_on_this_host_through_its_control_directory():
    """Before the seal the control directory is the sandbox user's: a hostile daemon could
    make a file there, unlink it and keep writing to it. It is a tmpfs of 64 KiB."""
    folder = Path(tempfile.mkdtemp(prefix="aimos-control-"))
    folder.chmod(0o755)  # the user below reaches it, as the sandbox's user does its bind
    control = folder / "control"
    control.mkdir()
    uid = unused_uid()
    give_control_dir(control, uid)
    try:
        assert os.path.ismount(control)
        hoarded = subprocess.run(
            ["/usr/bin/python3", "-c", HOARD, str(control)],
            user=uid,
            group=uid,
            capture_output=True,
            text=True,
            timeout=60,
        )
        said, written = hoarded.stdout.split()
        assert said == "ENOSPC", hoarded
        assert int(written) <= 64 * 1024
    finally:
        seal_control_dir(control)
        release_control_dir(control)
    assert not os.path.ismount(control)
    shutil.rmtree(folder)


def test_the_control_directory_is_unmounted_when_the_session_stops(make_session):
    sandbox, client, _ = make_session()
    assert os.path.ismount(sandbox.spec.control_dir) and client.ping() == {}

    sandbox.stop()

    assert not os.path.ismount(sandbox.spec.control_dir)


TASK = """
import errno, json, os, socket


def handle(payload):
    seen = open("/workspace/from-session.txt").read()
    os.makedirs("/workspace/by-task/deeper")
    with open("/workspace/by-task/deeper/note.txt", "w") as out:
        out.write("the task was here")
    with open("/workspace/from-session.txt", "a") as out:
        out.write(" + the task")
    with open("/tmp/scratch", "w") as out:
        out.write("not in the workspace")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect("/aimos/session/agent.sock")
        sock.sendall(b'{"op": "ping"}\\n')
        ping = json.loads(sock.makefile().readline())
    try:
        open("/aimos/session/planted", "w").close()
        planted = "yes"
    except OSError as exc:
        planted = errno.errorcode.get(exc.errno)
    return {
        "seen": seen,
        "uid": os.getuid(),
        "ping": ping,
        "planted": planted,
        "tmp_is_workspace": os.stat("/tmp").st_dev == os.stat("/workspace").st_dev,
    }
"""


def test_a_task_run_shares_the_workspace_and_daemon_of_its_session(
    make_session, make_agent, backend
):
    sandbox, client, disk = make_session()
    client.write("from-session.txt", b"the session wrote")
    env = make_agent({"agent/__init__.py": "", "agent/main.py": TASK})
    mount = SessionMount(disk.workspace, sandbox.spec.control_dir)

    run = backend.start(env, "agent.main:handle", None, limits=TEST_LIMITS, workspace=mount)
    events = list(run.events())
    outcome = run.wait(WAIT)

    assert outcome.status == Status.COMPLETED, (outcome, events)
    found = outcome.output
    assert found["seen"] == "the session wrote"
    assert found["ping"] == {"ok": True}
    assert found["planted"] in ("EROFS", "EACCES")
    assert not found["tmp_is_workspace"]
    if backend.name == "process":
        assert found["uid"] != sandbox.uid  # so the sharing below is across uids
    # The session reads, rewrites and deletes what the task made, and the other way round.
    assert client.read("by-task/deeper/note.txt")["data"] == b"the task was here"
    assert client.read("from-session.txt")["data"] == b"the session wrote + the task"
    client.write("by-task/deeper/note.txt", b"the session rewrote it")
    client.delete("by-task", recursive=True)
    names = {entry["name"] for entry in client.list("")["entries"]} - {".tmp"}
    assert names == {"from-session.txt"}
    if backend.name == "docker":  # the mount point of the task's /tmp, empty on the disk
        assert os.listdir(disk.workspace / ".tmp") == []


VERSION = """
def handle(payload):
    return payload
"""


def test_a_session_of_an_agent_version_runs_that_versions_python(make_session, make_agent):
    env = make_agent({"agent/__init__.py": "", "agent/main.py": VERSION})
    _, client, disk = make_session(env=env)

    found = run_python(
        client,
        """
        import json, os, sys
        open("/tmp/scratch", "w").write("x")
        print(json.dumps({"prefix": sys.prefix, "tmp": os.listdir("/tmp")}))
        """,
    )

    assert found["prefix"] in ("/env", "/opt/aimos/venv")
    assert "scratch" in found["tmp"]
    assert [name for name in os.listdir(disk.workspace) if name != ".tmp"] == []


def test_a_session_allowed_the_network_gets_the_egress_proxy_and_no_more(make_session):
    limits = replace(SESSION_LIMITS, network=True)
    _, client, _ = make_session(limits=limits)

    found = run_python(
        client,
        """
        import json, os, socket
        proxy = os.environ.get("HTTPS_PROXY", "")
        host, port = proxy.rsplit("/", 1)[-1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"CONNECT 127.0.0.1:6379 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            answer = sock.recv(4096).decode("latin-1").split("\\r\\n")[0]
        names = sorted(name for _, name in socket.if_nameindex())
        print(json.dumps({"proxy": proxy, "answer": answer, "interfaces": names}))
        """,
    )

    assert found["proxy"] and found["interfaces"] == ["lo"]
    assert found["answer"].startswith("HTTP/1.1 403 ")


HOST = """
import sys, time
from pathlib import Path
from sandbox.base import Limits, SessionSpec
from sandbox.backends import get_backend
from sandbox.config import SandboxConfig

config = SandboxConfig(root=Path({root!r}))
backend = get_backend({name!r}, config=config)
spec = SessionSpec({session_id!r}, Path({workspace!r}), Path({control!r}), Limits(memory_mb=128))
backend.start_session(spec)
print("started", flush=True)
time.sleep(600)
"""


def test_a_session_ends_with_its_host_and_the_sweep_removes_what_is_left(
    backend, tmp_path, request
):
    disk = WorkspaceDisk(tmp_path / "orphan", 16)
    control = tmp_path / "orphan" / "control"
    control.mkdir(parents=True)
    session_id = f"orphan-{token()}"
    root = getattr(backend, "root", tmp_path / "root")
    script = HOST.format(
        root=str(root), name=backend.name, session_id=session_id,
        workspace=str(disk.ensure()), control=str(control),
    )  # fmt: skip
    host = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert host.stdout.readline() == b"started\n"
        client = SessionClient(str(control / "agent.sock"))
        marker = token()
        client.proc_start(f"exec {SLEEPER} {marker}")
        assert started_with(marker)

        host.send_signal(signal.SIGKILL)
        host.wait(WAIT)
        # The daemon's stdin ends with its host: it kills what it started and ends.
        deadline = time.monotonic() + WAIT
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker) == []

        swept = backend.sweep()
        if backend.name == "docker":
            assert session_id in swept
            assert session_containers(request, session_id) == []
        else:
            assert swept != []  # its run directory and cgroups
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        # Like the disk, the control directory's tmpfs is its caller's to release (the
        # upkeep's, for a session whose host died).
        assert os.path.ismount(control)
        release_control_dir(control)
        disk.remove()


def test_an_unisolated_process_backend_refuses_sessions_and_task_runs(tmp_path, monkeypatch):
    tools = tmp_path / "bin"  # every tool the backend uses but bwrap
    tools.mkdir()
    for tool in ("sh", "env", "prlimit", "setpriv", "true"):
        (tools / tool).symlink_to(f"/usr/bin/{tool}")
    monkeypatch.setenv("PATH", str(tools))
    backend = ProcessBackend(tmp_path / "root", allow_unisolated=True)
    workspace, control = tmp_path / "workspace", tmp_path / "control"
    workspace.mkdir()
    control.mkdir()
    spec = SessionSpec("unisolated", workspace, control, SESSION_LIMITS)

    with pytest.raises(SandboxUnavailable, match="need the isolated process sandbox"):
        backend.start_session(spec)
    env = Environment("process", "none", tmp_path, str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="need the isolated process sandbox"):
        backend.start(env, "agent.main:handle", None, limits=TEST_LIMITS, workspace=spec.mount)
    assert os.listdir(control) == []


def test_sessions_start_while_sweeps_run(process_backend, tmp_path):
    """A sweep (the upkeep's, or another process's `check()`) never takes the run directory
    of a sandbox being made."""
    disk = WorkspaceDisk(tmp_path / "swept", 16)
    control = tmp_path / "swept" / "control"
    control.mkdir(parents=True)
    spec = SessionSpec("swept", disk.ensure(), control, SESSION_LIMITS)
    sweeping = threading.Event()
    sweeping.set()

    def sweep() -> None:
        while sweeping.is_set():
            process_backend.sweep()

    sweepers = [threading.Thread(target=sweep) for _ in range(4)]
    for sweeper in sweepers:
        sweeper.start()
    try:
        for _ in range(15):
            sandbox = process_backend.start_session(spec)
            try:
                assert SessionClient(str(sandbox.socket_path)).ping() == {}
            finally:
                sandbox.stop()
    finally:
        sweeping.clear()
        for sweeper in sweepers:
            sweeper.join()
        disk.remove()


def test_a_control_directory_holding_more_than_the_socket_fails_the_start(tmp_path):
    """A daemon that made a folder (or a link) beside its socket before the seal could write
    to this host's uncapped disk through it afterwards: the start fails instead."""
    from sandbox.base import SandboxError
    from sandbox.session import seal_ready_control_dir

    control = tmp_path / "control"
    control.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(control / "agent.sock"))
    try:
        seal_ready_control_dir(control)  # the socket alone: sealed
        (control / "stash").mkdir()
        with pytest.raises(SandboxError, match="other than its socket"):
            seal_ready_control_dir(control)
    finally:
        listener.close()
