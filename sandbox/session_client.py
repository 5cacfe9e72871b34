"""Host side of the session daemon's socket (`sandbox/session_agent.py`).

`SessionClient(socket_path, timeout=30.0)` has one method per op of the daemon. Each call
opens a connection of its own, so a client holds no state but its two settings and is safe
to share between threads (the web process does).

Everything the daemon says is untrusted (it runs inside the sandbox, next to the user's
code): every reply line is read up to MAX_LINE_BYTES and no further, must be a JSON object
of the protocol's shape, and must arrive in time — `timeout` for connecting and for each
plain reply, plus the op's own duration where it has one (exec's timeout, grep's
max_seconds, proc_stop's grace). So a call returns, or raises, in bounded time and memory:

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
import socket
import time
from collections.abc import Iterator
from typing import Any, Literal, overload

MAX_LINE_BYTES = 16 * 1024 * 1024
STREAMS = ("stdout", "stderr", "log")
Chunk = tuple[str, Any]


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
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):
            raise SessionUnreachable("the session daemon sent a line that is not JSON") from None
        if not isinstance(message, dict):
            raise SessionUnreachable("the session daemon sent a line that is not an object")
        return message


def _final(message: dict) -> dict:
    """The result of a final line, or SessionOpError for a refusal."""
    ok = message.pop("ok", None)
    if ok is True:
        return message
    code, error = message.get("code"), message.get("error")
    if ok is False and isinstance(code, str) and isinstance(error, str):
        raise SessionOpError(code[:100], error[:10_000])
    raise SessionUnreachable("the session daemon sent a reply of the wrong shape")


def _chunk(message: dict) -> Chunk | None:
    """(stream, text) of a stream line, or None when it is not one."""
    stream, data = message.get("stream"), message.get("data")
    if "ok" in message or stream is None:
        return None
    if stream not in STREAMS or not isinstance(data, str):
        raise SessionUnreachable("the session daemon sent a stream line of the wrong shape")
    return stream, data


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
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise SessionUnreachable(f"the session daemon does not answer: {exc}") from None
        try:
            sock.sendall(line)
        except OSError:
            pass  # refused before the request was read (busy): its answer is waiting
        return sock, _Reader(sock)

    def _call(self, request: dict, extra_seconds: float = 0.0) -> dict:
        sock, reader = self._connect(request)
        with sock:
            return _final(reader.line(time.monotonic() + self.timeout + extra_seconds))

    def _stream(self, request: dict, total_seconds: float | None) -> Iterator[Chunk]:
        """Chunks until the final line; each line within `timeout`, the whole within
        `total_seconds` (+ `timeout`) when given."""
        sock, reader = self._connect(request)
        end = None if total_seconds is None else time.monotonic() + total_seconds + self.timeout
        with sock:
            while True:
                deadline = time.monotonic() + self.timeout
                message = reader.line(deadline if end is None else min(deadline, end))
                chunk = _chunk(message)
                if chunk is None:
                    yield "result", _final(message)
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
            result["data"] = base64.b64decode(result.get("data"), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise SessionUnreachable("the session daemon sent data that is not base64") from None
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
        """`{exit_code, stdout, stderr, timed_out, truncated}` (exit_code < 0: a signal)."""
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
        return self._stream(request, total_seconds=timeout)

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
            return self._stream(request, total_seconds=None)
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
