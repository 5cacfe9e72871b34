"""Host side of the session daemon's socket (`sandbox/session_agent.py`).

`SessionClient(socket_path, timeout=30.0)` has one method per op of the daemon. Each call
opens a connection of its own, so a client holds no state but its two settings and is safe
to share between threads (the web process does).

Everything the daemon says is untrusted (it runs inside the sandbox, next to the user's
code): the socket is connected to only when it is a socket itself (a link put in its place
is never followed: it could lead to any socket of this host); every reply line is read up
to MAX_LINE_BYTES and no further, holds at most MAX_LINE_VALUES JSON values (so parsing it
stays within a few times its size), must be UTF-8 JSON of the op's shape (`RESULTS`: only
those fields are returned, their strings valid text, a lone surrogate made U+FFFD), and
must arrive in time — `timeout` for connecting and for each plain reply, plus the op's own
duration where it has one (exec's timeout, grep's max_seconds, proc_stop's grace). So a
call returns, or raises, in bounded time and memory:

- `SessionOpError(code, message)`: the daemon refused (`.code` is one of the protocol's
  codes, `.message` names the problem);
- `SessionUnreachable`: no socket, nobody answering, a connection dropped mid-reply, or a
  reply that is not the protocol (too long, not JSON, the wrong shape, too slow).

Streams (`exec_stream`, `proc_logs(..., follow=True)`) are generators of `(stream, data)`
pairs — `("stdout" | "stderr" | "log", text)` — ending with `("result", final dict)`.
Closing one early closes the connection (the daemon then kills an exec's processes).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any, Literal, overload

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_READ = 8 * 1024 * 1024  # the daemon's most bytes per read
# The daemon's biggest replies (10,000 listed entries or grep matches) hold ~110,000 values;
# a line of 16 MiB of `[],[],…` would be 5 million lists, some 400 MiB once parsed.
MAX_LINE_VALUES = 250_000
STREAMS = ("stdout", "stderr", "log")
Chunk = tuple[str, Any]

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_SURROGATE = re.compile("[\ud800-\udfff]")

# The result of each op, field by field: a type or a tuple of types (None: null), [shape] a
# list of such items, {field: shape} an object with those fields (the only ones kept).
ENTRY = {"name": str, "path": str, "type": str, "size": int, "modified": str}
PROCESS = {
    "pid": int,
    "name": (str, None),
    "command": str,
    "status": str,
    "started_at": str,
    "ended_at": (str, None),
    "exit_code": (int, None),
}


class Nullable:
    """A shape whose value may also be null."""

    def __init__(self, shape: Any) -> None:
        self.shape = shape


EXEC = {
    "exit_code": (int, None),
    "stdout": str,
    "stderr": str,
    "timed_out": bool,
    "truncated": bool,
    # What the command changed in the workspace; null: too much to say (anything may have).
    "changes": Nullable([{"path": str, "change": str}]),
}
RESULTS: dict[str, dict] = {
    "ping": {},
    "list": {"entries": [ENTRY], "truncated": bool},
    "stat": ENTRY,
    "read": {"data": str, "size": int, "offset": int, "length": int, "eof": bool},
    "write": {"path": str, "size": int},
    "delete": {},
    "mkdir": {},
    "glob": {"matches": [str], "truncated": bool},
    "grep": {
        "matches": [{"path": str, "line": int, "text": str}],
        "truncated": bool,
        "timed_out": bool,
        "files_searched": int,
        "binary_skipped": int,
        "large_skipped": int,
    },
    "exec": EXEC,
    "proc_start": PROCESS,
    "proc_list": {"processes": [PROCESS]},
    "proc_stop": PROCESS,
    "proc_logs": {"lines": [str]},
    "usage": {"bytes": int, "total_bytes": int, "free_bytes": int},
}


class SessionOpError(Exception):
    """The daemon refused an op: `code` (e.g. `not_found`, `symlink`) and `message`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SessionUnreachable(Exception):
    """The session's daemon could not be reached, or did not answer by the protocol."""


class _Reader:
    """Reads bounded JSON lines from a socket, each before its deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def line(self, deadline: float) -> dict:
        scanned = 0
        while (end := self.buf.find(b"\n", scanned)) < 0:
            scanned = len(self.buf)
            if scanned > MAX_LINE_BYTES:
                raise SessionUnreachable(
                    f"the session daemon sent a line over {MAX_LINE_BYTES} bytes"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionUnreachable("the session daemon did not answer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(min(1024 * 1024, MAX_LINE_BYTES + 1 - scanned))
            except TimeoutError:
                raise SessionUnreachable("the session daemon did not answer in time") from None
            except OSError as exc:
                raise SessionUnreachable(f"the session daemon's connection failed: {exc}") from None
            if not data:
                raise SessionUnreachable("the session daemon closed the connection mid-reply")
            self.buf += data
        raw = bytes(self.buf[:end])
        del self.buf[: end + 1]
        if _values(raw) > MAX_LINE_VALUES:
            raise SessionUnreachable(
                f"the session daemon sent a line of over {MAX_LINE_VALUES} JSON values"
            )
        try:  # strict UTF-8: json.loads would pass surrogates encoded in the bytes
            message = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            raise SessionUnreachable("the session daemon sent a line that is not JSON") from None
        if not isinstance(message, dict):
            raise SessionUnreachable("the session daemon sent a line that is not an object")
        return message


def _values(raw: bytes) -> int:
    """How many JSON values `raw` holds, about: its commas, colons and opening brackets,
    counted again outside strings when there are many."""

    def count(data: bytes) -> int:
        return sum(data.count(char) for char in (b",", b":", b"[", b"{"))

    rough = count(raw)
    return rough if rough <= MAX_LINE_VALUES else count(_JSON_STRING.sub(b"", raw))


def _text(value: str) -> str:
    """`value` as text that can be encoded (a lone surrogate becomes U+FFFD)."""
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


_MISSING = object()


def _shaped(value: Any, shape: Any) -> Any:
    """`value` as `shape` has it (see RESULTS); ValueError when it does not fit."""
    if isinstance(shape, Nullable):
        return None if value is None else _shaped(value, shape.shape)
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise ValueError
        return {key: _shaped(value.get(key, _MISSING), kind) for key, kind in shape.items()}
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise ValueError
        return [_shaped(item, shape[0]) for item in value]
    kinds = shape if isinstance(shape, tuple) else (shape,)
    kinds = tuple(type(None) if kind is None else kind for kind in kinds)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError
    return _text(value) if isinstance(value, str) else value


def _final(message: dict, shape: dict) -> dict:
    """The result of a final line, as `shape` has it, or SessionOpError for a refusal."""
    ok = message.get("ok")
    if ok is True:
        try:
            return _shaped(message, shape)
        except ValueError:
            wrong = "the session daemon sent a result of the wrong shape"
            raise SessionUnreachable(wrong) from None
    code, error = message.get("code"), message.get("error")
    if ok is False and isinstance(code, str) and isinstance(error, str):
        raise SessionOpError(_text(code[:100]), _text(error[:10_000]))
    raise SessionUnreachable("the session daemon sent a reply of the wrong shape")


def _chunk(message: dict) -> Chunk | None:
    """(stream, text) of a stream line, or None when it is not one."""
    stream, data = message.get("stream"), message.get("data")
    if "ok" in message or stream is None:
        return None
    if stream not in STREAMS or not isinstance(data, str):
        raise SessionUnreachable("the session daemon sent a stream line of the wrong shape")
    return stream, _text(data)


def _connect_socket(sock: socket.socket, path: str) -> None:
    """Connects `sock` to the socket at `path` itself: the name is opened without following
    a link (the daemon's side could have put one there, to any socket of this host), checked
    to be a socket, and connected to through that open file."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SessionUnreachable(
                f"the session daemon's socket {path} is not a socket (a link is never followed)"
            )
        sock.connect(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class SessionClient:
    """Talks to one session's daemon over its Unix socket (see the module docstring)."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    # plumbing

    def _connect(self, request: dict) -> tuple[socket.socket, _Reader]:
        line = json.dumps(request).encode() + b"\n"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            _connect_socket(sock, self.socket_path)
        except OSError as exc:
            sock.close()
            raise SessionUnreachable(f"the session daemon does not answer: {exc}") from None
        except SessionUnreachable:
            sock.close()
            raise
        try:
            sock.sendall(line)
        except OSError:
            pass  # refused before the request was read (busy): its answer is waiting
        return sock, _Reader(sock)

    def _call(self, request: dict, extra_seconds: float = 0.0) -> dict:
        sock, reader = self._connect(request)
        with sock:
            line = reader.line(time.monotonic() + self.timeout + extra_seconds)
            return _final(line, RESULTS[request["op"]])

    def _stream(self, request: dict, total_seconds: float | None, shape: dict) -> Iterator[Chunk]:
        """Chunks until the final line (a result of `shape`); each line within `timeout`,
        the whole within `total_seconds` (+ `timeout`) when given."""
        sock, reader = self._connect(request)
        end = None if total_seconds is None else time.monotonic() + total_seconds + self.timeout
        with sock:
            while True:
                deadline = time.monotonic() + self.timeout
                message = reader.line(deadline if end is None else min(deadline, end))
                chunk = _chunk(message)
                if chunk is None:
                    yield "result", _final(message, shape)
                    return
                if chunk[1]:  # empty chunks are the daemon's heartbeats
                    yield chunk

    # ops

    def ping(self) -> dict:
        return self._call({"op": "ping"})

    def list(self, path: str = "") -> dict:
        """`{entries: [{name, path, type, size, modified}], truncated}`, sorted by name."""
        return self._call({"op": "list", "path": path})

    def stat(self, path: str) -> dict:
        return self._call({"op": "stat", "path": path})

    def read(self, path: str, offset: int = 0, length: int | None = None) -> dict:
        """`{data: bytes, size, offset, length, eof}` (at most 8 MiB per call)."""
        result = self._call({"op": "read", "path": path, "offset": offset, "length": length})
        try:
            result["data"] = base64.b64decode(result["data"], validate=True)
        except (binascii.Error, ValueError):
            raise SessionUnreachable("the session daemon sent data that is not base64") from None
        asked = MAX_READ if length is None else length
        if len(result["data"]) != result["length"] or result["length"] > asked:
            raise SessionUnreachable("the session daemon sent more data than asked or said")
        return result

    def write(self, path: str, data: bytes, parents: bool = True) -> dict:
        """`{path, size}`; the file is replaced whole (a temporary file renamed over it)."""
        encoded = base64.b64encode(bytes(data)).decode()
        return self._call({"op": "write", "path": path, "data": encoded, "parents": parents})

    def delete(self, path: str, recursive: bool = False) -> dict:
        return self._call({"op": "delete", "path": path, "recursive": recursive})

    def mkdir(self, path: str, parents: bool = True) -> dict:
        return self._call({"op": "mkdir", "path": path, "parents": parents})

    def glob(self, pattern: str, path: str = "", limit: int = 1000) -> dict:
        """`{matches: [path], truncated}`."""
        return self._call({"op": "glob", "pattern": pattern, "path": path, "limit": limit})

    def grep(
        self,
        pattern: str,
        path: str = "",
        glob: str | None = None,
        ignore_case: bool = False,
        max_matches: int = 200,
        max_seconds: float = 5.0,
        max_line_chars: int = 500,
        max_file_bytes: int = 8 * 1024 * 1024,
    ) -> dict:
        """`{matches: [{path, line, text}], truncated, timed_out, files_searched,
        binary_skipped, large_skipped}`."""
        request = {
            "op": "grep",
            "pattern": pattern,
            "path": path,
            "glob": glob,
            "ignore_case": ignore_case,
            "max_matches": max_matches,
            "max_seconds": max_seconds,
            "max_line_chars": max_line_chars,
            "max_file_bytes": max_file_bytes,
        }
        return self._call(request, extra_seconds=max_seconds)

    def exec(
        self,
        command: str,
        timeout: float = 30.0,
        max_output_bytes: int = 1024 * 1024,
        cwd: str = "",
    ) -> dict:
        """`{exit_code, stdout, stderr, timed_out, truncated, changes}` (exit_code < 0: a
        signal; `changes`: `[{path, change}]` the command made in the workspace, or None when
        it made too many, or the workspace is too large, to say)."""
        request = _exec_request(command, timeout, max_output_bytes, cwd, stream=False)
        return self._call(request, extra_seconds=timeout)

    def exec_stream(
        self,
        command: str,
        timeout: float = 30.0,
        max_output_bytes: int = 1024 * 1024,
        cwd: str = "",
    ) -> Iterator[Chunk]:
        """("stdout" | "stderr", text) chunks, then ("result", the final dict: exec's, with
        empty stdout and stderr)."""
        request = _exec_request(command, timeout, max_output_bytes, cwd, stream=True)
        return self._stream(request, total_seconds=timeout, shape=EXEC)

    def proc_start(self, command: str, cwd: str = "", name: str | None = None) -> dict:
        """`{pid, name, command, status: "running", started_at, ended_at, exit_code}`."""
        return self._call({"op": "proc_start", "command": command, "cwd": cwd, "name": name})

    def proc_list(self) -> dict:
        return self._call({"op": "proc_list"})

    def proc_stop(self, pid: int, timeout: float = 5.0) -> dict:
        """The process's entry once it ended (SIGTERM, then SIGKILL after `timeout`)."""
        return self._call({"op": "proc_stop", "pid": pid, "timeout": timeout}, timeout + 35.0)

    @overload
    def proc_logs(self, pid: int, tail: int = 200, follow: Literal[False] = False) -> dict: ...

    @overload
    def proc_logs(self, pid: int, tail: int = 200, *, follow: Literal[True]) -> Iterator[Chunk]: ...

    def proc_logs(self, pid: int, tail: int = 200, follow: bool = False):
        """`{lines}` (the last `tail` lines); with `follow`, a generator of ("log", text)
        chunks — the tail first, then output as it comes — ending with ("result", the
        process's entry) once it ended."""
        request = {"op": "proc_logs", "pid": pid, "tail": tail, "follow": follow}
        if follow:
            return self._stream(request, total_seconds=None, shape=PROCESS)
        return self._call(request)

    def usage(self) -> dict:
        """`{bytes, total_bytes, free_bytes}` of the workspace's filesystem."""
        return self._call({"op": "usage"})


def _exec_request(command: str, timeout: float, max_output: int, cwd: str, stream: bool) -> dict:
    return {
        "op": "exec",
        "command": command,
        "timeout": timeout,
        "max_output_bytes": max_output,
        "cwd": cwd,
        "stream": stream,
    }
