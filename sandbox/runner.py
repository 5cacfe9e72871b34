"""AIMOS in-sandbox runner: imports an agent's entrypoint and speaks the event protocol.

Standard library only; it runs inside the sandbox with the version's Python. Usage:

    python -I runner.py <code_dir>   # JSON requests on stdin, JSON lines on stdout

Request, one line of JSON: {"mode": "run" | "inspect" | "warm",
          "entrypoint": "pkg.module:function", "payload": ..., "state": ..., "env": {NAME: value}}
("env" is optional: variables set before the agent is imported; it travels on stdin so
that secrets never appear in a command line.)

Warm mode: the first request ({"mode": "warm", "entrypoint", "env"}) has the entrypoint
imported at once, then the runner sends `{"type": "ready", "data": {}}` and reads a second
request: the run's ({"mode": "run"}, the same entrypoint, its payload, state and own "env",
set after the import and before the handler is called; with "cpu_seconds": [soft, hard],
the run's own RLIMIT_CPU, lowered from the warm sandbox's). An import that failed is
reported when that request arrives, as a cold run reports it. Anything else is refused.

Reusable warm mode: a warm request with "reuse": {"run_cpu_seconds": N} (N: the most CPU
seconds one run may be given) serves runs one after another. After a run's terminal message,
when it was a `result` or an `error` of type "exception", the runner makes the sandbox as the
next run must find it: every process it did not start with is killed (the sandbox's PID
namespace holds only the sandbox's init, the egress relay and the runner when it starts), the
contents of /workspace (with /tmp) and /dev/shm are deleted, the working directory and the
environment variables of the end of the import are restored; then it says `ready` again and
reads the next run's request. Module state (globals, imported modules, open files) is kept:
that is what reuse is for. It ends instead (exits) when a run left a thread behind, a process
it cannot kill or a file it cannot delete, or when another run could not get its N CPU
seconds under the hard RLIMIT_CPU the sandbox started with: a run's "cpu_seconds" [soft, hard]
then count from the CPU the runner has used so far (only the soft limit is moved; the hard
one stays the sandbox's).

Guarantees:
- Only this runner writes the protocol. The real stdout is moved to a private fd first;
  fd 1 and fd 2 become pipes whose lines turn into `log` events (source stdout/stderr),
  so `print()` — also a subprocess's — can never forge a protocol event.
- Every line is `{"type": ..., "data": {...}}`. The last one is terminal: `result`
  ({"output"}), `error` ({"message", "exception", "traceback", "error_type"}) or, in
  inspect mode, `inspection` ({"callable", "signature", "error", "traceback"}).
- A process forked by the agent never writes the protocol (only the runner's own pid does).
- Everything the agent printed is sent before the terminal message.

`error_type` of an `error`: "oom_killed" for MemoryError; "resource_limit" for a limit of the
sandbox (EAGAIN from fork or thread creation, EFBIG file too large, ENOSPC/EDQUOT, EMFILE);
"sandbox_error" when the request itself is broken; otherwise "exception".

`ctx`: delta(text), tool_call(name, args) -> call_id, tool_result(name, result, call_id=None),
log(message, level="info"), checkpoint(state, label=None), emit(type, data) (a type is 1 to
64 of `A-Za-z0-9_.:-`; types of the platform refused), state (the restored state, or None),
workspace (a task run's session workspace, below).

`ctx.workspace`, in a task run of a session (its sandbox has the session's workspace at
/workspace and the session's control folder at /aimos/session; elsewhere reading the
attribute raises RuntimeError saying so): read(path) -> str, read_bytes(path) -> bytes,
write(path, text_or_bytes) (folders made; written to a temporary file then renamed over the
target; sends a `file_changed` event {path, change: created | modified}), list(path=".") ->
[{name, path, type, size, modified}], run(command, timeout=30) -> {exit_code, stdout, stderr,
timed_out, truncated} (`/bin/sh -c` in the session's own sandbox, through its daemon's socket,
one JSON line each way; what it changed in the workspace is sent as `file_changed` events,
or one for the root, path "", when the daemon could not say). Paths follow the daemon's
rules (sandbox/session_agent.py): relative to the workspace root ("" or "." is the root),
no NUL, no `..`, never absolute; resolved component by component from an fd of /workspace
with O_NOFOLLOW, so a symbolic link is never followed (not even one swapped in meanwhile);
only regular files are read or replaced.
Refusals raise `ctx.workspace.Error` (`WorkspaceError`) with the daemon's `code`
(invalid_path, symlink, not_found, not_a_file, not_a_directory, too_large, ...).

Handlers: `handle(payload)` or `handle(payload, ctx)` (two positional parameters or
*args), sync or `async def`, generator or async generator. A generator's yields become
`content_delta` events: `str` as is, `bytes` decoded as UTF-8, `None` skipped, anything
else as its JSON text (or `str()` when it is not JSON-serialisable). A generator's output
is its `return` value, or when that is None the concatenation of everything it yielded.
Values given to `ctx` and the returned output must be JSON-serialisable; otherwise the
call raises TypeError (and a non-serialisable return value fails the run, saying so).
"""

from __future__ import annotations

import os
import sys

# First thing, before any import that might print: keep the real stdout for the protocol and
# the real stdin for the requests (os.dup gives non-inheritable fds), put /dev/null under fd 0
# (a warm sandbox's request arrives after the agent's import-time code ran) and pipes under
# fd 1 and fd 2.
_PROTOCOL_FD = os.dup(1)
_REQUEST_FD = os.dup(0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_OUT_READ, _out_write = os.pipe()
_ERR_READ, _err_write = os.pipe()
os.dup2(_out_write, 1)
os.dup2(_err_write, 2)
os.close(_out_write)
os.close(_err_write)

import errno  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable  # noqa: E402
from types import AsyncGeneratorType, GeneratorType  # noqa: E402

# asyncio, inspect and traceback are imported only when needed: each costs tens of ms at start.
CO_VARARGS = 0x04

MAIN_PID = os.getpid()
TMP = "/workspace/.tmp"  # where /tmp points in a sandbox (sandbox/process_command.py)
MAX_LOG_LINE = 16 * 1024  # longer lines are split so the runner's memory stays bounded
# The host refuses any other event type (sandbox/protocol.py: EVENT_TYPE): a type travels into
# SSE frames and must never carry a newline or anything else a frame could be forged with.
EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Types the platform owns (terminal messages, run lifecycle) or that have their own ctx method.
RESERVED_TYPES = frozenset(
    {
        "result",
        "error",
        "inspection",
        "log",
        "checkpoint",
        "content_delta",
        "tool_call",
        "tool_result",
    }
)


class Protocol:
    """Writes JSON lines on the private fd; one lock, only from the runner's own process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.closed = False

    def send(self, type_: str, data: dict) -> None:
        line = (json.dumps({"type": type_, "data": data}, ensure_ascii=False) + "\n").encode()
        if os.getpid() != MAIN_PID:
            return
        with self.lock:
            if self.closed:
                return
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view) :]

    def finish(self, type_: str, data: dict) -> None:
        """Send the terminal message; nothing is written after it until `reopen`."""
        self.send(type_, data)
        with self.lock:
            self.closed = True

    def reopen(self) -> None:
        """A reusable sandbox's next run begins (what was printed meanwhile was dropped)."""
        with self.lock:
            self.closed = False


def encode_json(value, what: str) -> None:
    """Raise a clear TypeError when `value` cannot travel as JSON."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None


class LogPump:
    """Turns the lines written on one of our pipes (fd 1 or 2) into `log` events."""

    def __init__(self, protocol: Protocol, fd: int, source: str, level: str, marker: str):
        self.protocol, self.fd, self.source, self.level = protocol, fd, source, level
        self.marker = marker.encode()
        self.drained = threading.Event()
        self.thread = threading.Thread(target=self.pump, name=f"log-{source}", daemon=True)
        self.thread.start()

    def emit(self, raw: bytes) -> None:
        message = raw.decode("utf-8", "replace").rstrip("\r")
        self.protocol.send("log", {"level": self.level, "message": message, "source": self.source})

    def pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            while True:
                line, newline, rest = pending.partition(b"\n")
                if not newline:
                    break
                pending = rest
                if line.endswith(self.marker):
                    if line[: -len(self.marker)]:
                        self.emit(line[: -len(self.marker)])
                    self.drained.set()
                else:
                    self.emit(line)
            while len(pending) > MAX_LOG_LINE:
                self.emit(pending[:MAX_LOG_LINE])
                pending = pending[MAX_LOG_LINE:]
        if pending:
            self.emit(pending)
        self.drained.set()


# --- ctx.workspace: a session's workspace, for a task run (see the module's docstring) ---------

WORKSPACE = "/workspace"
SESSION_DIR = "/aimos/session"  # the session's control folder, bound only into task runs
SESSION_SOCKET = SESSION_DIR + "/agent.sock"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_LIST_ENTRIES = 10_000
MAX_REPLY_BYTES = 16 * 1024 * 1024  # the longest reply line read from the daemon
CONNECT_SECONDS = 10.0
REPLY_SLACK_SECONDS = 10.0  # beyond a command's own timeout, for the daemon to answer
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LISTABLE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NO_SESSION = (
    "ctx.workspace is only available to a task run of a session (POST "
    "/api/v1/sessions/{id}/tasks); this run has no session"
)
OS_ERROR_CODES = {
    errno.ENOENT: "not_found",
    errno.ENOTDIR: "not_a_directory",
    errno.EEXIST: "exists",
    errno.ELOOP: "symlink",
    errno.EISDIR: "not_a_file",
    errno.ENXIO: "not_a_file",
    errno.ENOSPC: "too_large",
    errno.EDQUOT: "too_large",
    errno.EFBIG: "too_large",
    errno.ENAMETOOLONG: "invalid_path",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
}


class WorkspaceError(Exception):
    """A refusal of `ctx.workspace`: `code` (the session daemon's codes) and `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _os_error(exc: OSError, path: str) -> WorkspaceError:
    code = OS_ERROR_CODES.get(exc.errno, "error")
    return WorkspaceError(code, f"{path or '.'}: {exc.strerror or exc}")


def _split(path) -> list[str]:
    """The components of a workspace path ("" and "." are the root), by the daemon's rules."""
    if not isinstance(path, str):
        raise TypeError(f"a workspace path is a str, not {type(path).__name__}")
    if "\0" in path:
        raise WorkspaceError("invalid_path", f"path {path!r} contains a NUL character")
    if path.startswith("/"):
        raise WorkspaceError(
            "invalid_path", f"path {path!r} is absolute; give it relative to the workspace"
        )
    try:
        size = len(os.fsencode(path))
    except UnicodeEncodeError:
        raise WorkspaceError("invalid_path", f"path {path!r} cannot be encoded") from None
    if size > MAX_PATH_BYTES:
        raise WorkspaceError("invalid_path", f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise WorkspaceError("invalid_path", f"path {path!r} contains '..'")
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in parts):
        raise WorkspaceError("invalid_path", f"a name in {path!r} is longer than 255 bytes")
    return parts


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()  # noqa: UP017


class Workspace:
    """The session's workspace as `ctx.workspace` (see the module's docstring). Every path is
    walked from an fd of the workspace root, one component at a time with O_NOFOLLOW."""

    Error = WorkspaceError

    def __init__(
        self, protocol: Protocol, root: str = WORKSPACE, socket_path: str = SESSION_SOCKET
    ):
        self._protocol = protocol
        self._root = root
        self._socket_path = socket_path

    # paths

    def _open_dir(self, parts: list[str], create: bool = False) -> int:
        """An O_PATH fd of the directory `parts` (made, with its parents, when `create`)."""
        fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for index, name in enumerate(parts):
            where = "/".join(parts[: index + 1])
            try:
                next_fd = self._step(fd, name, where, create)
            finally:
                os.close(fd)
            fd = next_fd
        return fd

    def _step(self, fd: int, name: str, where: str, create: bool) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise WorkspaceError("not_found", f"{where}: no such directory") from None
        except OSError as exc:
            raise self._not_a_directory(fd, name, where, exc) from None
        try:
            os.mkdir(name, 0o777, dir_fd=fd)
        except FileExistsError:
            pass  # made meanwhile: opened by the same rules
        except OSError as exc:
            raise _os_error(exc, where) from None
        return self._step(fd, name, where, create=False)

    @staticmethod
    def _not_a_directory(fd: int, name: str, where: str, exc: OSError) -> WorkspaceError:
        try:
            found = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return _os_error(exc, where)
        if stat.S_ISLNK(found.st_mode):
            return WorkspaceError("symlink", f"{where}: is a symbolic link (never followed)")
        if not stat.S_ISDIR(found.st_mode):
            return WorkspaceError("not_a_directory", f"{where}: is not a directory")
        return _os_error(exc, where)

    def _parent(self, parts: list[str], create: bool = False) -> int:
        if not parts:
            raise WorkspaceError("invalid_path", "the workspace root itself is not a file")
        return self._open_dir(parts[:-1], create=create)

    # files

    def read_bytes(self, path: str) -> bytes:
        """The bytes of the regular file `path`."""
        parts = _split(path)
        where = "/".join(parts)
        dir_fd = self._parent(parts)
        try:
            try:
                found = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(found.st_mode):
                    raise WorkspaceError("symlink", f"{where}: is a symbolic link (never followed)")
                if not stat.S_ISREG(found.st_mode):
                    raise WorkspaceError("not_a_file", f"{where}: is not a regular file")
                fd = os.open(parts[-1], FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, where) from None
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped in after the check
                raise WorkspaceError("not_a_file", f"{where}: is not a regular file")
            chunks = []
            while chunk := os.read(fd, 1024 * 1024):
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise _os_error(exc, where) from None
        finally:
            os.close(fd)

    def read(self, path: str) -> str:
        """The text of the regular file `path` (UTF-8; `read_bytes` for anything else)."""
        data = self.read_bytes(path)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise WorkspaceError(
                "not_text", f"{path}: is not UTF-8 text; read it with read_bytes"
            ) from None

    def write(self, path: str, data) -> dict:
        """Write the whole file `path` (its folders made): to a temporary file beside it, then
        renamed over it, keeping an existing file's permission bits. `{path, size}`."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError(f"write takes str or bytes, not {type(data).__name__}")
        parts = _split(path)
        where = "/".join(parts)
        dir_fd = self._parent(parts, create=True)
        try:
            existed = self._replace(dir_fd, parts[-1], where, data)
        finally:
            os.close(dir_fd)
        change = "modified" if existed else "created"
        self._protocol.send("file_changed", {"path": where, "change": change})
        return {"path": where, "size": len(data)}

    @staticmethod
    def _replace(dir_fd: int, name: str, where: str, data: bytes) -> bool:
        """Whether a file was replaced (False: made)."""
        mode = None
        try:
            found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(found.st_mode):
                raise WorkspaceError("symlink", f"{where}: is a symbolic link (never followed)")
            if not stat.S_ISREG(found.st_mode):
                raise WorkspaceError("not_a_file", f"{where}: is not a regular file")
            mode = stat.S_IMODE(found.st_mode) & 0o777
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, where) from None
        temp = f".aimos-write-{os.urandom(8).hex()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(exc, where) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view[: 1024 * 1024]) :]
                if mode is not None:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
            raise _os_error(exc, where) from None
        return mode is not None

    def list(self, path: str = ".") -> list[dict]:
        """The entries of the folder `path`, sorted by name (at most 10,000): `{name, path,
        type: file | directory | symlink | other, size, modified}`; links are not followed."""
        parts = _split(path)
        fd = self._open_dir(parts)
        try:
            listable = os.open(".", LISTABLE_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _os_error(exc, "/".join(parts)) from None
        finally:
            os.close(fd)
        entries = []
        try:
            for name in sorted(os.listdir(listable)):
                try:
                    found = os.stat(name, dir_fd=listable, follow_symlinks=False)
                except OSError:
                    continue  # deleted meanwhile
                entries.append(
                    {
                        "name": name,
                        "path": "/".join([*parts, name]),
                        "type": _kind(found.st_mode),
                        "size": found.st_size,
                        "modified": _iso(found.st_mtime),
                    }
                )
                if len(entries) >= MAX_LIST_ENTRIES:
                    break
        finally:
            os.close(listable)
        return entries

    # commands

    def run(self, command: str, timeout: float = 30) -> dict:
        """Run `/bin/sh -c command` in the session's sandbox, in the workspace root; its whole
        process group is killed at `timeout` seconds. `{exit_code, stdout, stderr, timed_out,
        truncated}` (output past 1 MiB is discarded)."""
        if not isinstance(command, str) or not command.strip():
            raise TypeError("run takes a non-empty command string")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        reply = self._ask(
            {"op": "exec", "command": command, "timeout": timeout, "cwd": ""}, timeout
        )
        changes = reply.get("changes")
        if not isinstance(changes, list):  # too many to say: anything may have changed
            changes = [{"path": "", "change": "modified"}]
        for change in changes:
            if isinstance(change, dict):
                told = {key: str(change.get(key, "")) for key in ("path", "change")}
                self._protocol.send("file_changed", told)
        return {
            "exit_code": reply.get("exit_code"),
            "stdout": reply.get("stdout", ""),
            "stderr": reply.get("stderr", ""),
            "timed_out": bool(reply.get("timed_out")),
            "truncated": bool(reply.get("truncated")),
        }

    def _ask(self, request: dict, seconds: float) -> dict:
        """One request to the session's daemon and its one reply line (bounded in size and
        time); a refusal raises WorkspaceError with its code."""
        import socket

        deadline = time.monotonic() + seconds + REPLY_SLACK_SECONDS
        unreachable = "the session's daemon is not answering (is the session still active?)"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.settimeout(CONNECT_SECONDS)
                sock.connect(self._socket_path)
                sock.sendall(json.dumps(request).encode() + b"\n")
            except OSError as exc:
                raise WorkspaceError("session_unreachable", f"{unreachable}: {exc}") from None
            buffer = bytearray()
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or len(buffer) > MAX_REPLY_BYTES:
                    raise WorkspaceError("session_unreachable", unreachable)
                sock.settimeout(left)
                try:
                    chunk = sock.recv(1024 * 1024)
                except OSError as exc:
                    raise WorkspaceError("session_unreachable", f"{unreachable}: {exc}") from None
                if not chunk:
                    raise WorkspaceError("session_unreachable", unreachable)
                buffer += chunk
        finally:
            sock.close()
        try:
            reply = json.loads(bytes(buffer[: buffer.index(b"\n")]))
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise WorkspaceError("session_unreachable", "the session's daemon answered nonsense")
        if not reply["ok"]:
            raise WorkspaceError(str(reply.get("code") or "error"), str(reply.get("error") or ""))
        return reply


class Context:
    """The agent SDK (`ctx`): every method sends one event; values must be JSON-serialisable."""

    def __init__(self, protocol: Protocol, state) -> None:
        self._protocol = protocol
        self._calls = 0
        self._open_calls: dict[str, list[str]] = {}
        self._workspace: Workspace | None = None
        self.state = state

    @property
    def workspace(self) -> Workspace:
        """The session's workspace, in a task run of a session; RuntimeError elsewhere."""
        if self._workspace is None:
            if not os.path.isdir(SESSION_DIR):
                raise RuntimeError(NO_SESSION)
            self._workspace = Workspace(self._protocol)
        return self._workspace

    def delta(self, text: str) -> None:
        """Stream a piece of text (`content_delta`)."""
        self._protocol.send("content_delta", {"content": str(text)})

    def tool_call(self, name: str, args=None) -> str:
        """Announce a tool call; returns its call_id."""
        encode_json(args, "tool_call args")
        self._calls += 1
        call_id = f"call_{self._calls}"
        self._open_calls.setdefault(name, []).append(call_id)
        self._protocol.send("tool_call", {"call_id": call_id, "name": name, "args": args})
        return call_id

    def tool_result(self, name: str, result=None, call_id: str | None = None) -> None:
        """Report a tool's result; without call_id it answers the latest open call of `name`."""
        encode_json(result, "tool_result result")
        open_calls = self._open_calls.get(name, [])
        if call_id is None:
            call_id = open_calls.pop() if open_calls else None
        elif call_id in open_calls:
            open_calls.remove(call_id)
        self._protocol.send("tool_result", {"call_id": call_id, "name": name, "result": result})

    def log(self, message, level: str = "info") -> None:
        """A log line from the agent (source "agent"); level is debug, info, warning or error."""
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        self._protocol.send("log", {"level": level, "message": str(message), "source": "agent"})

    def checkpoint(self, state, label: str | None = None) -> None:
        """Save `state` (JSON) as a checkpoint; a restored run finds it in `ctx.state`."""
        encode_json(state, "checkpoint state")
        self._protocol.send("checkpoint", {"state": state, "label": label})

    def emit(self, type: str, data: dict | None = None) -> None:  # noqa: A002 (SDK name)
        """Send a custom event; the platform's own types are refused."""
        if not isinstance(type, str) or not EVENT_TYPE.fullmatch(type) or type.startswith("run_"):
            raise ValueError(
                f"invalid event type {type!r}: 1 to 64 of A-Z a-z 0-9 _ . : -, not run_*"
            )
        if type in RESERVED_TYPES:
            raise ValueError(f"event type {type!r} is reserved; use the ctx method for it")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise TypeError("event data must be a dict")
        encode_json(data, "event data")
        self._protocol.send(type, data)


def resolve(entrypoint: str):
    """Import `pkg.module:function` (the attribute may be dotted) and return the object."""
    module_name, sep, attr = entrypoint.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entrypoint must look like 'package.module:function', not {entrypoint!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def wants_ctx(fn) -> bool:
    """True when `fn` takes a second positional argument (or *args): it gets `ctx`."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is not None:  # a plain function or method: no need for the slow inspect module
        bound = 1 if hasattr(fn, "__self__") else 0
        return code.co_argcount - bound >= 2 or bool(code.co_flags & CO_VARARGS)
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def call_handler(fn, payload, ctx: Context):
    """Call the handler in whatever style it is written and return its output."""
    result = fn(payload, ctx) if wants_ctx(fn) else fn(payload)
    if isinstance(result, Awaitable):
        import asyncio

        result = asyncio.run(_awaited(result))
    if isinstance(result, GeneratorType):
        texts = []
        while True:
            try:
                item = next(result)
            except StopIteration as stop:
                return stop.value if stop.value is not None else "".join(texts)
            text = as_text(item)
            if text is not None:
                texts.append(text)
                ctx.delta(text)
    if isinstance(result, AsyncGeneratorType):
        import asyncio

        return asyncio.run(_drain_async(result, ctx))
    return result


async def _awaited(awaitable):
    return await awaitable


async def _drain_async(agen, ctx: Context) -> str:
    texts = []
    async for item in agen:
        text = as_text(item)
        if text is not None:
            texts.append(text)
            ctx.delta(text)
    return "".join(texts)


def error_type_of(exc: BaseException) -> str:
    """exception, or oom_killed / resource_limit when a limit of the sandbox caused it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return "oom_killed"
        if isinstance(exc, OSError) and exc.errno in (
            errno.EAGAIN,
            errno.EFBIG,
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EMFILE,
            errno.ENFILE,
        ):
            # EAGAIN escaping a handler is fork/thread creation refused by the process limit.
            return "resource_limit"
        if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
            return "resource_limit"
        exc = exc.__cause__ or exc.__context__
    return "exception"


def format_traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def describe(exc: BaseException) -> dict:
    message = str(exc)
    if isinstance(exc, SystemExit):
        message = f"the agent called sys.exit({exc.code!r})"
    return {
        "message": f"{type(exc).__name__}: {message}" if message else type(exc).__name__,
        "exception": type(exc).__name__,
        "traceback": format_traceback(exc),
        "error_type": error_type_of(exc),
    }


def read_request(requests) -> dict:
    """The next request: one line of JSON, an object."""
    request = json.loads(requests.readline())
    if not isinstance(request, dict):
        raise ValueError("a request must be a JSON object")
    return request


def set_env(request: dict) -> None:
    for name, value in (request.get("env") or {}).items():
        os.environ[str(name)] = str(value)


def load(entrypoint: str) -> tuple:
    """(handler, None), or (None, the exception) when importing the entrypoint failed."""
    try:
        loaded = resolve(entrypoint), None
    except BaseException as exc:  # noqa: BLE001 — reported as the run's result
        loaded = None, exc
    if os.getpid() != MAIN_PID:
        os._exit(1)  # a process forked at import time never gets to the runner's code
    return loaded


def await_run(requests, protocol: Protocol, entrypoint: str, reuse: Reuse | None) -> dict:
    """Warm mode, once the entrypoint is imported (or the sandbox reset): say so, then wait
    for the run's request."""
    protocol.send("ready", {})
    request = read_request(requests)
    if request.get("mode") != "run" or request.get("entrypoint") != entrypoint:
        raise ValueError(f"a sandbox warmed for {entrypoint!r} takes a run of it only")
    if request.get("cpu_seconds") is not None:
        soft, hard = request["cpu_seconds"]
        if reuse is None:
            resource.setrlimit(resource.RLIMIT_CPU, (int(soft), int(hard)))
        else:
            reuse.limit_cpu(int(soft))
    set_env(request)
    return request


def processes() -> set[tuple[int, str]]:
    """(pid, start time) of every process of this runner's uid it sees in /proc."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != os.getuid():
                    continue
                with open(f"/proc/{name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
            except OSError:
                continue
            found.add((int(name), fields[19].decode()))
    return found


class Reuse:
    """What a reusable sandbox restores between runs, and the checks that it can.

    Made before the import: the processes then (the sandbox's init, the egress relay, this
    runner) are the only ones a reset keeps. `imported()` records the rest once the agent is
    imported."""

    KILL_DEADLINE_S = 2.0

    def __init__(self, options: dict) -> None:
        if os.getuid() == 0:
            # Resets kill what this uid can: only a sandbox's own unprivileged uid may ask.
            raise PermissionError("a reusable sandbox never runs as root")
        self.run_cpu_seconds = int(options.get("run_cpu_seconds") or 0)
        self.keep = processes()
        self.environ: dict[str, str] = {}
        self.threads = 0
        self.cwd = ""

    def imported(self) -> None:
        self.environ = dict(os.environ)
        self.threads = len(os.listdir("/proc/self/task"))
        self.cwd = os.getcwd()

    def limit_cpu(self, soft: int) -> None:
        """The run gets `soft` CPU seconds from now (the hard limit cannot be raised back, so
        it stays the sandbox's)."""
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        used = int(time.process_time()) + 1
        limit = used + soft if hard == resource.RLIM_INFINITY else min(used + soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))

    def reset(self, pumps: list[LogPump], marker: str) -> bool:
        """Make the sandbox as the next run must find it; False when it cannot be (the
        sandbox then ends rather than serve a run with what this one left)."""
        if len(os.listdir("/proc/self/task")) > self.threads:
            return False  # a thread of the agent runs on: it could write after the wipe
        try:
            if not self.kill_strays():
                return False
            drain(pumps, marker)  # what the strays printed is dropped, not sent
            os.chdir(self.cwd)
            os.environ.clear()
            os.environ.update(self.environ)
            if not all([wipe("/workspace"), wipe("/dev/shm")]):
                return False
        except OSError:
            return False
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        return hard == resource.RLIM_INFINITY or time.process_time() + self.run_cpu_seconds < hard

    def kill_strays(self) -> bool:
        """SIGKILL every process but those kept, until none is left; False past a deadline."""
        deadline = time.monotonic() + self.KILL_DEADLINE_S
        while time.monotonic() < deadline:
            strays = [pid for pid, start in processes() - self.keep]
            if not strays:
                return True
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass  # this runner's own children; the others are the init's to reap
            except ChildProcessError:
                pass
            time.sleep(0.002)
        return False


def wipe(folder: str) -> bool:
    """Delete everything in `folder`; /tmp's target (/workspace/.tmp, the sandbox's, not the
    agent's to delete) is emptied instead. True when nothing else is left."""
    for entry in os.scandir(folder):
        try:
            if entry.path == TMP:
                wipe(TMP)
            elif entry.is_dir(follow_symlinks=False):
                # A directory the agent made unreadable or unwritable is its own: open it up.
                os.chmod(entry.path, 0o700)
                for path, dirs, _files in os.walk(entry.path):
                    for name in dirs:
                        if not os.path.islink(os.path.join(path, name)):
                            os.chmod(os.path.join(path, name), 0o700)
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    return all(entry.path == TMP for entry in os.scandir(folder)) and (
        folder != "/workspace" or not os.listdir(TMP)
    )


def run(request: dict, protocol: Protocol, loaded: tuple) -> tuple[str, dict]:
    fn, failure = loaded
    if failure is not None:
        return "error", describe(failure)
    ctx = Context(protocol, request.get("state"))
    try:
        output = call_handler(fn, request.get("payload"), ctx)
        try:
            json.dumps(output)
        except (TypeError, ValueError) as exc:
            return "error", {
                "message": f"the return value must be JSON-serialisable: {exc}",
                "exception": "TypeError",
                "traceback": "",
                "error_type": "exception",
            }
        return "result", {"output": output}
    except BaseException as exc:  # noqa: BLE001 — the agent's failure is the run's result
        if os.getpid() != MAIN_PID:
            os._exit(1)
        return "error", describe(exc)


def inspect_entrypoint(entrypoint: str) -> tuple[str, dict]:
    try:
        obj = resolve(entrypoint)
    except BaseException as exc:  # noqa: BLE001
        if os.getpid() != MAIN_PID:
            os._exit(1)
        return "inspection", {
            "callable": False,
            "signature": None,
            "error": describe(exc)["message"],
            "traceback": format_traceback(exc),
        }
    signature = None
    if callable(obj):
        import inspect

        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            pass
    return "inspection", {
        "callable": callable(obj),
        "signature": signature,
        "error": None if callable(obj) else f"{entrypoint} is not callable",
        "traceback": None,
    }


def drain(pumps: list[LogPump], marker: str) -> None:
    """Returns once everything printed so far went through the pumps."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    for pump in pumps:
        pump.drained.clear()
    for fd in (1, 2):
        try:
            os.write(fd, (marker + "\n").encode())
        except OSError:
            pass
    for pump in pumps:
        pump.drained.wait(5)


def reusable(kind: str, data: dict) -> bool:
    """A run after which the sandbox may serve another: a result, or the agent's own error."""
    return kind == "result" or (kind == "error" and data.get("error_type") == "exception")


def main() -> None:
    protocol = Protocol(_PROTOCOL_FD)
    marker = "\x00aimos-drained-" + os.urandom(16).hex()
    pumps = [
        LogPump(protocol, _OUT_READ, "stdout", "info", marker),
        LogPump(protocol, _ERR_READ, "stderr", "error", marker),
    ]
    text = {"buffering": 1, "encoding": "utf-8", "errors": "backslashreplace", "closefd": False}
    sys.stdout = open(1, "w", **text)  # noqa: SIM115
    sys.stderr = open(2, "w", **text)  # noqa: SIM115
    sys.stdin = open(os.devnull)  # noqa: SIM115 — the requests have their own fd
    requests = open(_REQUEST_FD, "rb")  # noqa: SIM115

    reuse = None
    request: dict = {}
    try:
        request = read_request(requests)
        set_env(request)
        if request.get("mode") == "warm" and isinstance(request.get("reuse"), dict):
            reuse = Reuse(request["reuse"])
        code_dir = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
        sys.path.insert(0, code_dir)
        os.chdir(code_dir)
        if request.get("mode") == "inspect":
            kind, data = inspect_entrypoint(request["entrypoint"])
        else:
            loaded = load(request["entrypoint"])
            if request.get("mode") == "warm":
                if reuse is not None:
                    reuse.imported()
                request = await_run(requests, protocol, request["entrypoint"], reuse)
            kind, data = run(request, protocol, loaded)
    except BaseException as exc:  # noqa: BLE001
        if os.getpid() != MAIN_PID:
            os._exit(1)
        kind, data = "error", describe(exc) | {"error_type": "sandbox_error"}
    end(protocol, pumps, marker, kind, data)

    while reuse is not None and reusable(kind, data) and reuse.reset(pumps, marker):
        protocol.reopen()
        try:
            request = await_run(requests, protocol, request["entrypoint"], reuse)
            kind, data = run(request, protocol, loaded)
        except BaseException as exc:  # noqa: BLE001
            if os.getpid() != MAIN_PID:
                os._exit(1)
            kind, data = "error", describe(exc) | {"error_type": "sandbox_error"}
        end(protocol, pumps, marker, kind, data)
    os._exit(0 if kind != "error" else 1)


def end(protocol: Protocol, pumps: list[LogPump], marker: str, kind: str, data: dict) -> None:
    """Send a run's terminal message once everything it printed was sent."""
    if os.getpid() != MAIN_PID:
        # An agent's fork() returned here in the child: it never speaks for the run.
        os._exit(0)
    drain(pumps, marker)
    protocol.finish(kind, data)


if __name__ == "__main__":
    main()
