"""What is done inside a running session — files, search, shell, processes — straight from the
web process to the daemon in the session's sandbox, over its Unix socket
(`sandbox.session_client.SessionClient`).

The session must be `active` (Conflict otherwise). Each operation records the session's use
(`last_active_at`, at most once per TOUCH_SECONDS), which keeps it from its idle stop. A file
written or deleted here is told to the session's sockets (`file_changed`, `workspaces.live`),
as a task's `ctx.workspace.write` is. The daemon's refusals become API errors with its
message as `detail` and its code as `code`: `not_found` and `no_such_process` a 404, every
other a 400. A daemon that does not answer is a 503 (`session_unreachable`): the sandbox is
gone or stuck, which its host notices and records (the session then reads `failed`), so the
request is not the client's fault.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from rest_framework import status

from core.errors import Conflict, NotFound, ServiceError
from sandbox.session_client import SessionClient, SessionOpError, SessionUnreachable
from workspaces import live
from workspaces.choices import SessionStatus
from workspaces.models import Session

# Use of a session is written at most this often (a write per request would be wasted).
TOUCH_SECONDS = 5
# How long a plain operation may take in the daemon before the request gives up.
OPERATION_SECONDS = 30.0
# Most bytes one read of the daemon returns (its own limit); downloads read in these steps.
READ_BYTES = 8 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# Daemon codes that mean "no such thing" (a 404); every other refusal is a 400.
NOT_FOUND_CODES = {"not_found", "no_such_process"}


class SessionUnavailable(ServiceError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "session_unreachable"


def refusal(exc: SessionOpError) -> ServiceError:
    """The API error for a refusal of the daemon: its message and code, 404 or 400."""
    kind = NotFound if exc.code in NOT_FOUND_CODES else ServiceError
    return kind(exc.message, code=exc.code)


UNREACHABLE = (
    "The session's sandbox is not answering (it may have stopped); get the session to see "
    "its status"
)


def require_active(session: Session) -> None:
    if session.status == SessionStatus.ACTIVE:
        return
    if session.status in SessionStatus.ended():
        detail = f"The session is {session.status}, not active; start it first"
    elif session.status == SessionStatus.PAUSED:
        detail = "The session is paused; resume it first"
    else:
        detail = f"The session is {session.status}, not active yet"
    raise Conflict(detail, code="session_not_active")


def use(session: Session) -> None:
    """The session is used now: Conflict unless it is active, else its use is recorded (at
    most once per TOUCH_SECONDS), which keeps it from its idle stop."""
    require_active(session)
    Session.touch(session.pk, unless_since=timedelta(seconds=TOUCH_SECONDS))


@contextmanager
def daemon(session: Session, *, timeout: float = OPERATION_SECONDS) -> Iterator[SessionClient]:
    """A client of the session's daemon; its refusals and silence become API errors."""
    use(session)
    try:
        yield SessionClient(str(session.socket_path), timeout=timeout)
    except SessionOpError as exc:
        raise refusal(exc) from None
    except SessionUnreachable:
        raise SessionUnavailable(UNREACHABLE) from None


class AbortableClient(SessionClient):
    """A client whose open connections can be shut down from another thread, so a stream whose
    reader went away ends at once rather than at the daemon's next message (the daemon then
    kills what the stream ran). It keeps the sockets `SessionClient._connect` opens."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__(socket_path, timeout=timeout)
        self.sockets: list[socket.socket] = []
        self.aborted = threading.Event()

    def _connect(self, request: dict):
        sock, reader = super()._connect(request)
        self.sockets.append(sock)
        if self.aborted.is_set():
            self.abort()
        return sock, reader

    def abort(self) -> None:
        self.aborted.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed already
                pass


class Stream:
    """The events of a streaming operation as `(kind, data)`, ending with its final event; a
    refusal or silence of the daemon midway is a last `("error", {detail, code})`. `abort()`,
    from any thread, ends it at once."""

    def __init__(self, client: AbortableClient, events: Iterator[tuple[str, dict]]) -> None:
        self.client = client
        self.events = self._guarded(events)

    def _guarded(self, events) -> Iterator[tuple[str, dict]]:
        try:
            yield from events
        except SessionOpError as exc:
            error = refusal(exc)
            yield "error", {"detail": error.detail, "code": error.code}
        except SessionUnreachable:
            if not self.client.aborted.is_set():
                yield "error", {"detail": UNREACHABLE, "code": SessionUnavailable.code}

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        return self.events

    def close(self) -> None:
        self.events.close()

    def abort(self) -> None:
        self.client.abort()


def streamed(session: Session, open_stream, *, timeout: float) -> Stream:
    """A streaming operation: `open_stream(client)` gives its events from the client's
    generator. Whether the session is active is checked now, before the first event."""
    use(session)
    client = AbortableClient(str(session.socket_path), timeout=timeout)
    return Stream(client, open_stream(client))


# --- Files -------------------------------------------------------------------------------------


def list_files(session: Session, path: str) -> dict:
    with daemon(session) as client:
        return client.list(path)


def stat_file(session: Session, path: str) -> dict:
    with daemon(session) as client:
        return client.stat(path)


def read_file(session: Session, path: str, *, offset: int = 0, length: int | None = None) -> dict:
    """`{path, size, offset, length, eof, data: bytes}`: up to READ_BYTES from `offset`."""
    length = READ_BYTES if length is None else min(length, READ_BYTES)
    with daemon(session) as client:
        result = client.read(path, offset=offset, length=length)
    data = result["data"]
    return {
        "path": path,
        "size": int(result.get("size", 0)),
        "offset": int(result.get("offset", offset)),
        "length": len(data),
        "eof": bool(result.get("eof", True)),
        "data": data,
    }


def read_chunks(session: Session, path: str, start: int, end: int | None) -> Iterator[bytes]:
    """The bytes of the file from `start` up to `end` (exclusive; None: its end), read
    CHUNK_BYTES at a time. Whether the session is active is checked now, once: the chunks are
    read on a thread of the response's own, which touches no database."""
    use(session)
    client = SessionClient(str(session.socket_path), timeout=OPERATION_SECONDS)

    def chunks() -> Iterator[bytes]:
        position = start
        while end is None or position < end:
            step = CHUNK_BYTES if end is None else min(CHUNK_BYTES, end - position)
            try:
                chunk = client.read(path, offset=position, length=step)
            except SessionOpError as exc:
                raise refusal(exc) from None
            except SessionUnreachable:
                raise SessionUnavailable(UNREACHABLE) from None
            if chunk["data"]:
                yield chunk["data"]
            position += len(chunk["data"])
            if chunk.get("eof", True) or not chunk["data"]:
                return

    return chunks()


def write_file(session: Session, path: str, data: bytes) -> dict:
    """Write the whole file (made with its folders; replaced at once if it exists); the
    session's sockets are told (`file_changed`, `created` or `modified`)."""
    with daemon(session) as client:
        existed = _exists(client, path)
        written = client.write(path, data, parents=True)
    changed(session, written.get("path") or path, "modified" if existed else "created")
    return written


def delete_file(session: Session, path: str, *, recursive: bool = False) -> None:
    """Delete the file (or the folder, with `recursive`); the session's sockets are told
    (`file_changed`, `deleted`)."""
    with daemon(session) as client:
        client.delete(path, recursive=recursive)
    changed(session, path, "deleted")


def changed(session: Session, path: str, change: str) -> None:
    """Tell the session's sockets that `path` (relative to the workspace) was `change`d."""
    # As the daemon reads it: "" and "." parts left out.
    where = "/".join(part for part in path.split("/") if part not in ("", "."))
    live.publish(session.pk, "file_changed", {"path": where, "change": change})


def changed_by_command(session: Session, changes: list[dict] | None) -> None:
    """Tell the session's sockets what a command changed; None (too much to say): that the
    whole workspace may have changed (`path` "")."""
    for change in changes if changes is not None else [{"path": "", "change": "modified"}]:
        changed(session, change["path"], change["change"])


def _exists(client: SessionClient, path: str) -> bool:
    """Whether `path` is there now (a refusal, as for a path that cannot be written, is
    "no": the write that follows says why)."""
    try:
        client.stat(path)
    except SessionOpError:
        return False
    return True


# --- Search ------------------------------------------------------------------------------------


def find_files(session: Session, pattern: str, path: str = "", *, limit: int = 1000) -> dict:
    with daemon(session) as client:
        return client.glob(pattern, path=path, limit=limit)


def grep(session: Session, pattern: str, path: str = "", **options) -> dict:
    """Lines matching the regular expression `pattern` (options: `glob`, `ignore_case`,
    `max_matches`), as the daemon bounds them."""
    with daemon(session) as client:
        return client.grep(pattern, path=path, **options)


# --- Shell -------------------------------------------------------------------------------------

# The daemon's own wall clock for a command comes first; the socket's leaves room for it.
SOCKET_SLACK_SECONDS = 10.0
EXIT_FIELDS = ("exit_code", "timed_out", "truncated")


def shell(session: Session, command: str, *, timeout: float, cwd: str = "") -> dict:
    """Run `/bin/sh -c command` in the session: `{exit_code, stdout, stderr, timed_out,
    truncated}` once it has ended (killed with its whole process group at `timeout`)."""
    with daemon(session) as client:  # the client adds the command's timeout to its own
        result = client.exec(command, timeout=timeout, cwd=cwd)
    changed_by_command(session, result.pop("changes"))
    return result


def shell_stream(session: Session, command: str, *, timeout: float, cwd: str = "") -> Stream:
    """The command's output as it comes — `("stdout" | "stderr", {"data"})` — then
    `("exit", {exit_code, timed_out, truncated})`."""

    def events(client):
        for stream, data in client.exec_stream(command, timeout=timeout, cwd=cwd):
            if stream == "result":
                changed_by_command(session, data["changes"])
                yield "exit", {key: data.get(key) for key in EXIT_FIELDS}
            else:
                yield stream, {"data": data}

    # The command may be silent until its end: each line may take as long as the whole.
    return streamed(session, events, timeout=timeout + SOCKET_SLACK_SECONDS)


# --- Processes ---------------------------------------------------------------------------------


def processes(session: Session) -> list[dict]:
    with daemon(session) as client:
        return client.proc_list().get("processes", [])


def start_process(session: Session, command: str, *, cwd: str = "", name: str | None = None):
    with daemon(session) as client:
        return client.proc_start(command, cwd=cwd, name=name)


def stop_process(session: Session, pid: int) -> dict:
    with daemon(session) as client:
        return client.proc_stop(pid)


def process_logs(session: Session, pid: int, *, tail: int) -> list[str]:
    with daemon(session) as client:
        return client.proc_logs(pid, tail=tail).get("lines", [])


def follow_logs(session: Session, pid: int, *, tail: int) -> Stream:
    """The process's last `tail` lines and then what it writes — `("log", {"data"})` — until
    it exits: then `("end", {…the process entry})`. NotFound at once for an unknown pid."""
    if not any(entry.get("pid") == pid for entry in processes(session)):
        raise NotFound(f"No process {pid} in this session", code="no_such_process")

    def events(client):
        for stream, data in client.proc_logs(pid, tail=tail, follow=True):
            yield ("end", data) if stream == "result" else ("log", {"data": data})

    # A followed process may stay quiet as long as it likes: the daemon's heartbeats (every
    # 5 s) keep each wait for a line short.
    return streamed(session, events, timeout=OPERATION_SECONDS)
