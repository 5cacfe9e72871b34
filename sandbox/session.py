"""Sessions' sandboxes: what the backends share (the interface is in `sandbox.base`).

A session's sandbox runs one program, the session daemon (`sandbox/session_agent.py`, bound
read-only at /aimos/session_agent.py), as the sandbox's unprivileged user:

    python -I -S /aimos/session_agent.py --socket /aimos/session/agent.sock --root /workspace
        --max-file-bytes <limits.max_file_mb> --tmp-dir /tmp

with the version's Python (/env on the process backend, the image's on Docker) when the
session has an agent version, else the base Python. Its stdin is a pipe from the process
that started it and is never written: the daemon ends (killing what it started) when that
process goes away. It says `ready` on stdout once it listens, and nothing after that
(`DaemonOutput` reads it). The control directory belongs to the sandbox's user only while
the daemon makes its socket there (`give_control_dir`), then to root again
(`seal_control_dir`), so nothing in the sandbox may add to it nor replace the socket; it is a
tiny tmpfs of its own while the sandbox runs (`release_control_dir` unmounts it), so nothing
made there before the seal can grow on this host. A task run's sandbox gets it read-only and
can connect to the socket.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from sandbox.base import Limits, SandboxError, SessionMount, SessionSandbox, SessionSpec

__all__ = [
    "AGENT_IN_SANDBOX",
    "AGENT_PATH",
    "CONTROL_IN_SANDBOX",
    "READY_SECONDS",
    "STOP_GRACE_SECONDS",
    "DaemonOutput",
    "SessionMount",
    "SessionSandbox",
    "SessionSpec",
    "check_mount",
    "daemon_argv",
    "give_control_dir",
    "release_control_dir",
    "remove_socket",
    "seal_control_dir",
]

AGENT_PATH = Path(__file__).with_name("session_agent.py")
AGENT_IN_SANDBOX = "/aimos/session_agent.py"
CONTROL_IN_SANDBOX = "/aimos/session"
WORKSPACE_IN_SANDBOX = "/workspace"
TMP_IN_SANDBOX = "/tmp"
READY_LINE = b"ready"
# The tmpfs of a control directory: room for the socket and little else.
CONTROL_BYTES = 64 * 1024
CONTROL_INODES = 16
MS_NOSUID, MS_NODEV, MS_NOEXEC, MNT_DETACH = 2, 4, 8, 2
_libc = ctypes.CDLL(None, use_errno=True)
READY_SECONDS = 30.0  # for the daemon to say it listens
STOP_GRACE_SECONDS = 3.0  # for the daemon to end its processes itself at stdin EOF
MB = 1024 * 1024


def daemon_argv(python: str, limits: Limits) -> list[str]:
    """The daemon's command line inside the sandbox, run by `python`."""
    socket_path = f"{CONTROL_IN_SANDBOX}/{SessionSandbox.SOCKET_NAME}"
    return [python, "-I", "-S", AGENT_IN_SANDBOX, "--socket", socket_path,
            "--root", WORKSPACE_IN_SANDBOX, "--max-file-bytes", str(limits.max_file_mb * MB),
            "--tmp-dir", TMP_IN_SANDBOX]  # fmt: skip


def check_mount(mount: SessionMount) -> SessionMount:
    """The mount with absolute paths; SandboxError unless both are real directories (not
    links: a bind follows them)."""
    resolved = []
    for what, path in (("workspace", mount.workspace), ("control directory", mount.control_dir)):
        path = Path(os.path.abspath(path))
        try:
            mode = os.lstat(path).st_mode
        except OSError as exc:
            raise SandboxError(f"the session's {what} {path} is missing: {exc}") from None
        if not stat.S_ISDIR(mode):
            raise SandboxError(f"the session's {what} {path} is not a directory")
        resolved.append(path)
    return SessionMount(*resolved)


def give_control_dir(control_dir: Path, uid: int) -> None:
    """Make the control directory the sandbox user's (0755), its old socket gone: a tmpfs of
    CONTROL_BYTES and CONTROL_INODES mounted there first (kept when one already is), so what
    the daemon makes there before the seal — even a file it unlinks and keeps open — takes
    at most that much of this host, never its disk."""
    if not os.path.ismount(control_dir):
        options = f"size={CONTROL_BYTES},nr_inodes={CONTROL_INODES},mode=0755"
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _libc.mount(b"tmpfs", os.fsencode(control_dir), b"tmpfs", flags, options.encode()):
            error = ctypes.get_errno()
            raise SandboxError(
                f"could not mount the session's control directory: {os.strerror(error)}"
            )
    os.chown(control_dir, uid, uid, follow_symlinks=False)
    os.chmod(control_dir, 0o755)
    remove_socket(control_dir)


def release_control_dir(control_dir: Path) -> None:
    """Unmount the control directory's tmpfs (its socket goes with it); nothing when none is
    mounted there. Detached: a sandbox still ending keeps its own view of it until it ends."""
    try:
        if not os.path.ismount(control_dir):
            return
    except OSError:
        return
    if _libc.umount2(os.fsencode(control_dir), MNT_DETACH):
        error = ctypes.get_errno()
        raise SandboxError(
            f"could not unmount the session's control directory: {os.strerror(error)}"
        )


def seal_control_dir(control_dir: Path) -> None:
    """The control directory is root's again (0755): once the daemon has made its socket,
    nothing in the sandbox may add files there."""
    try:
        os.chown(control_dir, 0, 0, follow_symlinks=False)
        os.chmod(control_dir, 0o755)
    except FileNotFoundError:
        pass  # deleted with its session meanwhile


def seal_ready_control_dir(control_dir: Path) -> None:
    """Seal the control directory of a daemon that said `ready`; SandboxError unless it then
    holds the daemon's socket and nothing else (a daemon that made a folder or a link there
    before the seal could still write to this host's disk through it)."""
    seal_control_dir(control_dir)
    name = SessionSandbox.SOCKET_NAME
    if sorted(os.listdir(control_dir)) != [name] or not stat.S_ISSOCK(
        os.lstat(control_dir / name).st_mode
    ):
        raise SandboxError("the session's daemon left something other than its socket")


def remove_socket(control_dir: Path) -> None:
    """Delete a daemon's socket left in the control directory (never follows a link)."""
    try:
        os.unlink(control_dir / SessionSandbox.SOCKET_NAME)
    except (FileNotFoundError, IsADirectoryError):
        pass


class DaemonOutput:
    """Reads the daemon's stdout in a thread of its own: `wait_ready()` returns once it said
    `ready`; everything after is read and dropped (so it can never block on a full pipe), and
    `ended` is set at EOF (the daemon, and so the sandbox, has ended)."""

    MAX_LINE = 4096

    def __init__(self, stream: BinaryIO, name: str = "session-stdout") -> None:
        self.stream = stream
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.said: deque[bytes] = deque(maxlen=8)  # what it printed instead, for errors
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name=name, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                line = self.stream.readline(self.MAX_LINE)
                if not line:
                    return
                if self.ready.is_set():
                    continue
                if line.strip() == READY_LINE:
                    with self._changed:
                        self.ready.set()
                        self._changed.notify_all()
                else:
                    self.said.append(line)
        except (OSError, ValueError):
            return
        finally:
            with self._changed:
                self.ended.set()
                self._changed.notify_all()

    def wait_ready(self, timeout: float = READY_SECONDS) -> bool:
        """True once the daemon said `ready`; False when it ended first or `timeout` passed."""
        with self._changed:
            self._changed.wait_for(lambda: self.ready.is_set() or self.ended.is_set(), timeout)
        return self.ready.is_set()

    def printed(self) -> str:
        return b"".join(self.said).decode("utf-8", "replace")[-2000:]
