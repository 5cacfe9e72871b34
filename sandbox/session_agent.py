"""AIMOS session daemon: serves a session's workspace on a Unix socket, inside its sandbox.

Standard library only, one file, Python 3.10+. Run inside the session's sandbox as

    python -I -S session_agent.py --socket /aimos/session/agent.sock --root /workspace
        [--max-file-bytes N] [--tmp-dir /tmp] [--max-connections N] [--max-processes N]

It listens on the socket (unlinked first, mode 0666), prints `ready` on stdout once it
listens (and nothing on stdout after that), and serves each connection in a thread of its
own: one JSON request line in, JSON lines out (see "The daemon's protocol" in the sessions
plan). A plain op answers `{"ok": true, ...}` or `{"ok": false, "code", "error"}`; a
streaming op (`exec` with `"stream": true`, `proc_logs` with `"follow": true`) first sends
`{"stream": "stdout"|"stderr"|"log", "data": text}` lines. A follow sends an empty `log`
chunk after HEARTBEAT_SECONDS of silence, so a client can bound its wait for each line.

Guarantees:
- Paths are relative to the root and resolved component by component from an fd of the
  root, each directory opened O_PATH|O_DIRECTORY|O_NOFOLLOW and each file
  O_NOFOLLOW|O_NONBLOCK then checked with fstat: a symbolic link is never followed (not even
  one swapped in between a check and a use), a FIFO never blocks, and `..`, absolute paths,
  NUL, symlinks, devices, FIFOs and sockets are refused with a code and a message naming the
  path. A hard link is the file itself: the workspace disk being a filesystem of its own,
  none can lead outside it.
- Writes go to a temporary file in the same directory, renamed over the target; they are
  capped at --max-file-bytes, and a full disk or a file-size limit (ENOSPC, EDQUOT, EFBIG;
  SIGXFSZ is ignored) is answered `too_large`, leaving no temporary file.
- Every reply line stays far below the client's 16 MiB cap: listings, globs, greps and log
  tails stop at a byte budget (`truncated`).
- `exec` runs `/bin/sh -c` in a process group (a session) of its own: at its timeout, when
  it keeps flooding past its output cap, or when the client goes away, the whole group is
  killed (SIGKILL); when the shell ends, what is left of its group is killed too.
- `grep` runs in a worker process killed at its time limit, so no regular expression can
  hold the daemon.
- Background processes (`proc_start`) each get a process group; their output goes to log
  files under <tmp-dir>/aimos-procs capped at LOG_CAP_BYTES (two files, rotated).
- At most --max-connections connections and --max-processes process groups at once: past
  that, the answer is `busy`.
- On stdin EOF (its host went away), SIGTERM, SIGINT or SIGHUP the daemon kills every
  process group it started and exits.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import errno
import fnmatch
import json
import os
import re
import secrets
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone

MiB = 1024 * 1024

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_DEPTH = 64  # how deep glob and grep descend
MAX_DIR_SCAN = 100_000  # entries read from one directory
MAX_LIST_ENTRIES = 10_000
MAX_WALK_ENTRIES = 200_000  # entries a glob visits
MAX_WALK_SECONDS = 10.0
# What `exec` compares before and after a command to say what it changed: a workspace of
# more entries, or a command changing more, is said to have changed anywhere (`changes` null).
MAX_TRACKED_ENTRIES = 5_000
MAX_CHANGES = 100
REPLY_BUDGET = 8 * MiB  # JSON bytes of the items of one reply
MAX_READ_BYTES = 8 * MiB
MAX_COMMAND_CHARS = 100_000
MAX_EXEC_SECONDS = 86_400.0
MAX_EXEC_OUTPUT = 2 * MiB  # JSON-escaped, still under the client's line cap
MAX_STREAM_OUTPUT = 64 * MiB
FLOOD_FACTOR = 4  # output past the cap discarded before the group is killed
DRAIN_SECONDS = 2.0  # reading what is left once a group was killed
CHUNK = 64 * 1024
REQUEST_SECONDS = 60.0  # to receive a whole request
SEND_SECONDS = 30.0  # for the client to take a reply line
HEARTBEAT_SECONDS = 5.0
ACCEPT_BACKOFF_SECONDS = 0.1
LOG_CAP_BYTES = 8 * MiB
TAIL_MAX_BYTES = 1 * MiB
MAX_TAIL_LINES = 10_000
MAX_LOG_LINE_CHARS = 16_384
MAX_ENDED_PROCS = 100
BINARY_PROBE = 8192
GREP_DEFAULTS = {
    "max_matches": (200, 1, 10_000),
    "max_seconds": (5.0, 0.01, 60.0),
    "max_line_chars": (500, 1, 10_000),
    "max_file_bytes": (8 * MiB, 1, 64 * MiB),
}

BASE64 = re.compile("[A-Za-z0-9+/]*={0,2}")

DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LISTABLE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class OpError(Exception):
    """A refusal sent to the client as `{"ok": false, "code", "error"}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientGone(Exception):
    """The client closed its connection or stopped reading: nothing more is sent."""


def now_iso(ts: float | None = None) -> str:
    utc = timezone.utc  # noqa: UP017 — datetime.UTC is Python 3.11+
    return datetime.fromtimestamp(time.time() if ts is None else ts, utc).isoformat()


# --- request fields ------------------------------------------------------------------


def field(req: dict, key: str, default):
    """The request's field; missing or null means `default`."""
    value = req.get(key)
    return default if value is None else value


def get_str(req: dict, key: str, default: str | None = None, max_chars: int = 100_000) -> str:
    value = field(req, key, default)
    if not isinstance(value, str):
        raise OpError("invalid_request", f"'{key}' must be a string")
    if len(value) > max_chars:
        raise OpError("invalid_request", f"'{key}' is longer than {max_chars} characters")
    return value


def get_opt_str(req: dict, key: str, max_chars: int = 1000) -> str | None:
    return None if req.get(key) is None else get_str(req, key, max_chars=max_chars)


def get_bool(req: dict, key: str, default: bool) -> bool:
    value = field(req, key, default)
    if not isinstance(value, bool):
        raise OpError("invalid_request", f"'{key}' must be true or false")
    return value


def get_number(req: dict, key: str, default: float, lo: float, hi: float, kind=float):
    """The field as `kind` (int or float) within [lo, hi]; booleans are not numbers."""
    value = field(req, key, default)
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise OpError("invalid_request", f"'{key}' must be {what} from {lo} to {hi}")
    return kind(value)


# --- paths ---------------------------------------------------------------------------


def split_path(path: str) -> list[str]:
    """The components of a workspace path; "" and "." are the root. Refuses (invalid_path)
    NUL, absolute paths, `..`, names that cannot be encoded, and over-long paths."""
    if "\0" in path:
        raise OpError("invalid_path", f"path {path!r} contains a NUL character")
    if path.startswith("/"):
        raise OpError("invalid_path", f"path {path!r} is absolute; give it relative to the root")
    try:
        size = len(os.fsencode(path))
    except UnicodeEncodeError:
        raise OpError("invalid_path", f"path {path!r} cannot be encoded") from None
    if size > MAX_PATH_BYTES:
        raise OpError("invalid_path", f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise OpError("invalid_path", f"path {path!r} contains '..'")
    for part in parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise OpError("invalid_path", f"a name in {path!r} is longer than 255 bytes")
    return parts


def join(parts: list[str]) -> str:
    return "/".join(parts)


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(st: os.stat_result, parts: list[str]) -> dict:
    return {
        "name": parts[-1] if parts else "",
        "path": join(parts),
        "type": kind_of(st.st_mode),
        "size": st.st_size,
        "modified": now_iso(st.st_mtime),
    }


def os_error(exc: OSError, path: str) -> OpError:
    """The refusal for an OSError met while working on `path`."""
    code = {
        errno.ENOENT: "not_found",
        errno.ENOTDIR: "not_a_directory",
        errno.EEXIST: "exists",
        errno.ENOTEMPTY: "exists",
        errno.ELOOP: "symlink",
        errno.EISDIR: "not_a_file",
        errno.ENXIO: "not_a_file",
        errno.ENOSPC: "too_large",
        errno.EDQUOT: "too_large",
        errno.EFBIG: "too_large",
        errno.ENAMETOOLONG: "invalid_path",
        errno.EAGAIN: "busy",  # fork refused: the sandbox's process limit
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EROFS: "permission_denied",
    }.get(exc.errno, "error")
    return OpError(code, f"{path or '.'}: {exc.strerror or exc}")


class Tree:
    """The workspace, reached only through an fd of its root (see the module's guarantees).

    Every method that returns an fd leaves closing it to the caller."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def _step(self, fd: int, name: str, where: str, create: bool) -> int:
        """Opens directory `name` under `fd` (O_PATH, never following a link), making it
        first when it is missing and `create`."""
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise OpError("not_found", f"{where}: no such directory") from None
        except OSError as exc:
            raise self._not_dir(fd, name, where, exc) from None
        try:
            os.mkdir(name, 0o777, dir_fd=fd)
        except FileExistsError:
            pass  # made meanwhile: open whatever it is, by the same rules
        except OSError as exc:
            raise os_error(exc, where) from None
        return self._step(fd, name, where, create=False)

    def _not_dir(self, fd: int, name: str, where: str, exc: OSError) -> OpError:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return os_error(exc, where)
        if stat.S_ISLNK(st.st_mode):
            return OpError("symlink", f"{where}: is a symbolic link (never followed)")
        if not stat.S_ISDIR(st.st_mode):
            return OpError("not_a_directory", f"{where}: is not a directory")
        return os_error(exc, where)

    def open_dir(self, parts: list[str], create: bool = False) -> int:
        """An O_PATH fd of the directory `parts` (made with its parents when `create`)."""
        fd = os.dup(self.root_fd)
        for i, name in enumerate(parts):
            try:
                next_fd = self._step(fd, name, join(parts[: i + 1]), create)
            finally:
                os.close(fd)
            fd = next_fd
        return fd

    def open_listable(self, parts: list[str]) -> int:
        """A readable fd of the directory `parts`, for scandir."""
        fd = self.open_dir(parts)
        try:
            return os.open(".", LISTABLE_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise os_error(exc, join(parts)) from None
        finally:
            os.close(fd)

    def parent(self, parts: list[str], create: bool = False) -> int:
        """The O_PATH fd of the directory holding the last component of `parts`."""
        if not parts:
            raise OpError("invalid_path", "the workspace root itself cannot be used here")
        return self.open_dir(parts[:-1], create=create)

    def lstat(self, parts: list[str]) -> os.stat_result:
        """The status of `parts` itself (a final symlink is described, not followed)."""
        if not parts:
            return os.stat(self.root_fd)
        fd = self.parent(parts)
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            raise os_error(exc, join(parts)) from None
        finally:
            os.close(fd)


def open_regular(dir_fd: int, name: str, path: str) -> tuple[int, os.stat_result]:
    """Opens `name` under `dir_fd` for reading when it is a regular file (checked before and,
    with fstat, after the open: a link, FIFO, device or socket swapped in is refused)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise OpError("symlink", f"{path}: is a symbolic link (never followed)")
        if not stat.S_ISREG(st.st_mode):
            raise OpError("not_a_file", f"{path}: is a {file_kind(st.st_mode)}, not a file")
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise os_error(exc, path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OpError("not_a_file", f"{path}: is a {file_kind(st.st_mode)}, not a file")
    return fd, st


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks, total = [], 0
    while total < length:
        data = os.pread(fd, min(length - total, MiB), offset + total)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def dir_entries(fd: int) -> list[tuple[str, str]]:
    """(name, type) of the entries of a readable directory fd, sorted by name (at most
    MAX_DIR_SCAN of them); the type of a symlink is `symlink`, never its target's."""
    found = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_symlink():
                kind = "symlink"
            elif entry.is_dir(follow_symlinks=False):
                kind = "directory"
            elif entry.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            found.append((entry.name, kind))
            if len(found) >= MAX_DIR_SCAN:
                break
    found.sort()
    return found


def walk(tree: Tree, base: list[str]) -> Iterator[tuple[str, str, str, int]]:
    """(path relative to base, name, type, fd of its directory) of every entry below `base`,
    depth first in name order, at most MAX_DEPTH deep; symlinks are reported, never entered.
    The fd is valid until the next item. Use with `closing()` so fds are closed early."""
    stack: list[tuple[int, str, Iterator[tuple[str, str]]]] = []
    try:
        top = tree.open_listable(base)
        stack.append((top, "", iter(dir_entries(top))))
        while stack:
            fd, prefix, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                os.close(fd)
                stack.pop()
                continue
            name, kind = item
            rel = f"{prefix}/{name}" if prefix else name
            yield rel, name, kind, fd
            if kind == "directory" and len(stack) < MAX_DEPTH:
                try:
                    child = os.open(name, LISTABLE_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # gone or swapped for something else meanwhile
                stack.append((child, rel, iter(dir_entries(child))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def snapshot(tree: Tree) -> dict[str, tuple[str, int, int]] | None:
    """`{path: (type, size, mtime_ns)}` of every entry of the workspace (as `walk` finds
    them), or None when it holds more than MAX_TRACKED_ENTRIES: too many to compare."""
    entries: dict[str, tuple[str, int, int]] = {}
    with closing(walk(tree, [])) as found:
        for rel, name, kind, fd in found:
            if len(entries) >= MAX_TRACKED_ENTRIES:
                return None
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            entries[rel] = (kind, info.st_size, info.st_mtime_ns)
    return entries


def changes_between(before, after) -> list[dict] | None:
    """`[{path, change: created | modified | deleted}]` from one snapshot to the next, in
    path order; what is below a folder made or deleted is left out (the folder says it).
    None when either snapshot is None or more than MAX_CHANGES changed: the caller can only
    say that the workspace may have changed anywhere."""
    if before is None or after is None:
        return None
    changes: list[dict] = []
    whole: set[str] = set()  # folders made or deleted
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new or any(path.startswith(f"{folder}/") for folder in whole):
            continue
        if old is None or new is None:
            change = "created" if old is None else "deleted"
            if (new or old)[0] == "directory":
                whole.add(path)
        elif old[0] == new[0] == "directory":
            continue  # its entries say what changed in it
        else:
            change = "modified"
        if len(changes) == MAX_CHANGES:
            return None
        changes.append({"path": path, "change": change})
    return changes


def glob_matcher(pattern: str) -> Callable[[str, str], bool]:
    """A test of (relative path, name) for `pattern`: without a `/` it matches names at
    any depth; with one it matches the whole relative path, `**` standing for any number
    of directories (fnmatch rules in each component)."""
    if "/" not in pattern:
        return lambda rel, name: fnmatch.fnmatchcase(name, pattern)
    wanted = [part for part in pattern.split("/") if part not in ("", ".")]
    return lambda rel, name: parts_match(wanted, rel.split("/"))


def parts_match(pattern: list[str], parts: list[str]) -> bool:
    def closure(states: set[int]) -> set[int]:
        done = set(states)
        for state in states:
            while state < len(pattern) and pattern[state] == "**":
                state += 1
                done.add(state)
        return done

    states = closure({0})
    for part in parts:
        following = set()
        for state in states:
            if state < len(pattern):
                if pattern[state] == "**":
                    following.add(state)
                elif fnmatch.fnmatchcase(part, pattern[state]):
                    following.add(state + 1)
        states = closure(following)
        if not states:
            return False
    return len(pattern) in states


class Budget:
    """Counts the JSON bytes of the items put in one reply."""

    def __init__(self, limit: int = REPLY_BUDGET) -> None:
        self.left = limit

    def take(self, item) -> bool:
        self.left -= len(json.dumps(item)) + 2
        return self.left >= 0


# --- grep (in a worker process) ------------------------------------------------------


def grep_params(req: dict) -> dict:
    params = {
        "pattern": get_str(req, "pattern", max_chars=1000),
        "path": get_str(req, "path", ""),
        "glob": get_opt_str(req, "glob"),
        "ignore_case": get_bool(req, "ignore_case", False),
    }
    for key, (default, lo, hi) in GREP_DEFAULTS.items():
        params[key] = get_number(req, key, default, lo, hi, type(default))
    if not params["pattern"]:
        raise OpError("invalid_pattern", "the pattern is empty")
    compile_pattern(params)
    split_path(params["path"])
    return params


def compile_pattern(params: dict) -> re.Pattern:
    flags = re.IGNORECASE if params["ignore_case"] else 0
    try:
        return re.compile(params["pattern"], flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise OpError("invalid_pattern", f"invalid pattern {params['pattern']!r}: {exc}") from None


def grep_result(timed_out: bool = False) -> dict:
    """An empty grep result (every field a grep answers)."""
    result = {"matches": [], "truncated": False, "timed_out": timed_out, "files_searched": 0}
    result.update(binary_skipped=0, large_skipped=0)
    return result


def grep(tree: Tree, params: dict) -> dict:
    """Searches text files under params["path"] line by line; stops at max_matches, at
    max_seconds (checked between lines) and at the reply budget."""
    regex = compile_pattern(params)
    base = split_path(params["path"])
    deadline = time.monotonic() + params["max_seconds"]
    matches_glob = glob_matcher(params["glob"]) if params["glob"] else None
    result = grep_result()
    budget = Budget()

    def search(dir_fd: int, name: str, path: str) -> bool:
        """False when the search must stop."""
        try:
            fd, st = open_regular(dir_fd, name, path)
        except OpError:
            return True
        try:
            if st.st_size > params["max_file_bytes"]:
                result["large_skipped"] += 1
                return True
            data = pread_all(fd, params["max_file_bytes"], 0)
        finally:
            os.close(fd)
        if b"\0" in data[:BINARY_PROBE]:
            result["binary_skipped"] += 1
            return True
        result["files_searched"] += 1
        for number, raw in enumerate(data.split(b"\n"), 1):
            if number % 1000 == 0 and time.monotonic() > deadline:
                result["timed_out"] = True
                return False
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if regex.search(line):
                match = {"path": path, "line": number, "text": line[: params["max_line_chars"]]}
                if len(result["matches"]) >= params["max_matches"] or not budget.take(match):
                    result["truncated"] = True
                    return False
                result["matches"].append(match)
        return True

    st = tree.lstat(base)
    if stat.S_ISREG(st.st_mode):
        fd = tree.parent(base)
        try:
            search(fd, base[-1], join(base))
        finally:
            os.close(fd)
        return result
    with closing(walk(tree, base)) as entries:
        for rel, name, kind, dir_fd in entries:
            if time.monotonic() > deadline:
                result["timed_out"] = True
                break
            if kind != "file" or (matches_glob and not matches_glob(rel, name)):
                continue
            if not search(dir_fd, name, join(base + [rel])):
                break
    return result


def grep_worker(root: str) -> int:
    """The `--grep-worker` mode: one grep request on stdin, one JSON answer on stdout."""
    try:
        params = grep_params(json.loads(sys.stdin.buffer.read()))
        answer = {"ok": True, **grep(Tree(root), params)}
    except OpError as exc:
        answer = {"ok": False, "code": exc.code, "error": exc.message}
    except OSError as exc:
        answer = {"ok": False, "code": "error", "error": f"the search failed: {exc}"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


# --- process groups ------------------------------------------------------------------


def start_thread(target: Callable, *args) -> threading.Thread:
    """A started daemon thread, or `busy` when none can be had (threads count against the
    sandbox's process limit)."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        raise OpError("busy", "the session has too many processes to do this now") from None
    return thread


class Groups:
    """Every process group this daemon started and whose leader it has not yet reaped.

    A group is its leader's pid; the leader stays unreaped (a zombie at worst) until the
    group was killed, so the number can never name someone else's group."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.live: set[int] = set()
        self.closed = False

    def spawn(self, argv: list[str], **popen_args) -> subprocess.Popen:
        """Starts `argv` as the leader of a new session and process group, or refuses
        (busy) when `limit` groups are live or the daemon is stopping."""
        with self.lock:
            if self.closed:
                raise OpError("busy", "the session daemon is stopping")
            if len(self.live) >= self.limit:
                raise OpError("busy", f"too many processes (at most {self.limit} at once)")
            proc = subprocess.Popen(argv, start_new_session=True, close_fds=True, **popen_args)
            self.live.add(proc.pid)
            return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL to the whole group, unless it was already reaped."""
        with self.lock:
            if proc.pid in self.live:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def signal(self, proc: subprocess.Popen, signum: int) -> None:
        with self.lock:
            if proc.pid in self.live:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def reap(self, proc: subprocess.Popen) -> int:
        """Waits for the leader to exit, kills what is left of its group, then reaps the
        leader and forgets the group. Returns the leader's exit code (negative: signal)."""
        if proc.returncode is None:  # reaped already (communicate() does): its pid is free
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            self.kill(proc)
        with self.lock:
            code = proc.wait()
            self.live.discard(proc.pid)
        return code

    def kill_all(self) -> None:
        """Kills every live group; no group can be started afterwards."""
        with self.lock:
            self.closed = True
            for pgid in self.live:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Output:
    """The output of one exec: kept up to `cap` bytes (stdout and stderr together), the
    rest discarded; flooding once FLOOD_FACTOR × cap more was discarded. With `send`, kept
    chunks are sent as they come (decoded incrementally) instead of being collected."""

    def __init__(self, cap: int, send: Callable[[str, str], None] | None = None) -> None:
        self.cap = cap
        self.send = send
        self.kept = {"stdout": bytearray(), "stderr": bytearray()}
        self.decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in self.kept
        }
        self.used = 0
        self.discarded = 0

    def add(self, stream: str, data: bytes) -> bool:
        """Takes a chunk; False once the process floods."""
        keep = data[: max(0, self.cap - self.used)]
        self.used += len(keep)
        self.discarded += len(data) - len(keep)
        if keep and self.send:
            text = self.decoders[stream].decode(keep)
            if text:
                self.send(stream, text)
        elif keep:
            self.kept[stream] += keep
        return self.discarded <= FLOOD_FACTOR * max(self.cap, CHUNK)

    def finish(self) -> dict:
        if self.send:
            for stream, decoder in self.decoders.items():
                text = decoder.decode(b"", final=True)
                if text:
                    self.send(stream, text)
        return {
            "stdout": self.kept["stdout"].decode("utf-8", "replace"),
            "stderr": self.kept["stderr"].decode("utf-8", "replace"),
            "truncated": self.discarded > 0,
        }


class LogFile:
    """A background process's output, capped at LOG_CAP_BYTES: `<pid>.log` and, once that
    holds half the cap, it becomes `<pid>.log.1` and a new one starts. Positions are
    absolute (bytes ever written); the caller holds the process's lock."""

    def __init__(self, directory: str, pid: int) -> None:
        self.path = os.path.join(directory, f"{pid}.log")
        self.old_path = self.path + ".1"
        for path in (self.path, self.old_path):  # an earlier process of the same pid's
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.fd = self._create(self.path)
        self.old_fd: int | None = None
        self.written = self.start = self.old_start = 0
        self.closed = False

    @staticmethod
    def _create(path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(path, flags, 0o600)

    def append(self, data: bytes) -> None:
        """Adds `data`; a full /tmp loses log output, never the process."""
        if self.closed:
            return
        try:
            if self.written - self.start + len(data) > LOG_CAP_BYTES // 2:
                self._rotate()
            os.pwrite(self.fd, data, self.written - self.start)
        except OSError:
            return
        self.written += len(data)

    def _rotate(self) -> None:
        fresh = self._create(self.path + ".new")
        os.replace(self.path, self.old_path)
        os.replace(self.path + ".new", self.path)
        if self.old_fd is not None:
            os.close(self.old_fd)
        self.old_fd, self.old_start = self.fd, self.start
        self.fd, self.start = fresh, self.written

    def first(self) -> int:
        return self.old_start if self.old_fd is not None else self.start

    def read(self, pos: int, limit: int) -> tuple[bytes, int]:
        """Up to `limit` bytes from `pos` (moved up to the oldest byte kept); the new pos."""
        if self.closed:
            return b"", pos
        pos = max(pos, self.first())
        if pos < self.start and self.old_fd is not None:
            data = os.pread(self.old_fd, min(limit, self.start - pos), pos - self.old_start)
        else:
            data = os.pread(self.fd, min(limit, self.written - pos), pos - self.start)
        return data, pos + len(data)

    def tail(self, max_bytes: int) -> bytes:
        pos, chunks = max(self.first(), self.written - max_bytes), []
        while pos < self.written:
            data, pos = self.read(pos, self.written - pos)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self, delete: bool) -> None:
        """Closes the files (readers then see an empty, closed log) and deletes them."""
        self.closed = True
        for fd in (self.fd, self.old_fd):
            if fd is not None:
                os.close(fd)
        for path in (self.path, self.old_path) if delete else ():
            try:
                os.unlink(path)
            except OSError:
                pass


def tail_text(data: bytes, lines: int) -> str:
    """The last `lines` lines of `data` (a partial last line counts as one), as text."""
    if lines <= 0:
        return ""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    start = end
    for _ in range(lines):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            break
    return data[start + 1 :].decode("utf-8", "replace")


def log_lines(text: str) -> list[str]:
    """`text` cut at newlines (a final newline ends the last line), each line capped."""
    lines = text.split("\n") if text else []
    if text.endswith("\n"):
        lines.pop()
    return [line[:MAX_LOG_LINE_CHARS] for line in lines]


class Proc:
    """A background process: its group, log file and state. `cond` guards everything."""

    def __init__(self, popen: subprocess.Popen, command: str, name: str | None, log: LogFile):
        self.popen = popen
        self.pid = popen.pid
        self.command = command
        self.name = name
        self.log = log
        self.started_at = now_iso()
        self.ended_at: str | None = None
        self.exit_code: int | None = None
        self.stopped = False
        self.finished = False
        self.cond = threading.Condition()
        self.pumped = threading.Event()

    def describe(self) -> dict:
        status = "running"
        if self.finished:
            died_of_signal = self.exit_code is not None and self.exit_code < 0
            status = "killed" if self.stopped or died_of_signal else "exited"
        return {
            "pid": self.pid,
            "name": self.name,
            "command": self.command,
            "status": status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
        }


# --- the daemon ----------------------------------------------------------------------


class Connection:
    """One client connection: reads the request line, sends reply lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read_request(self, max_bytes: int) -> dict:
        deadline = time.monotonic() + REQUEST_SECONDS
        buf = bytearray()
        scanned = 0
        while True:
            end = buf.find(b"\n", scanned)
            if end >= 0:
                break
            scanned = len(buf)
            if len(buf) > max_bytes:
                raise OpError("invalid_request", f"the request is longer than {max_bytes} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientGone()
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(MiB)
            except OSError:
                raise ClientGone() from None
            if not data:
                raise ClientGone()
            buf += data
        # A write's request is up to 4/3 of max_file_bytes: decoded then parsed without a
        # copy more than needed (the sandbox's data limit is its memory limit).
        del buf[end:]
        try:
            text = buf.decode()
            del buf
            request = json.loads(text)
        except (ValueError, RecursionError):
            raise OpError("invalid_request", "the request is not a line of JSON") from None
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise OpError("invalid_request", "the request must be an object with an 'op'")
        return request

    def send(self, message: dict) -> None:
        line = json.dumps(message).encode() + b"\n"
        self.sock.settimeout(SEND_SECONDS)
        try:
            self.sock.sendall(line)
        except OSError:
            raise ClientGone() from None

    def send_chunk(self, stream: str, data: str) -> None:
        self.send({"stream": stream, "data": data})

    def gone(self) -> bool:
        """True when the client closed its side (it sends nothing after its request)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


def refuse(sock: socket.socket, why: str) -> None:
    """Answers `busy` without reading the request; the line is tiny, so it fits the
    socket's buffer and sending never waits."""
    with sock:
        try:
            Connection(sock).send({"ok": False, "code": "busy", "error": why})
        except ClientGone:
            pass


class Daemon:
    """The ops over one workspace; each connection is served in a thread of its own."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tree = Tree(args.root)
        self.max_file_bytes = args.max_file_bytes
        self.log_dir = os.path.join(args.tmp_dir, "aimos-procs")
        self.groups = Groups(args.max_processes)
        self.connections = threading.BoundedSemaphore(args.max_connections)
        self.procs: dict[int, Proc] = {}
        self.procs_lock = threading.Lock()
        self.plain: dict[str, Callable[[dict], dict]] = {
            "ping": lambda req: {},
            "list": self.op_list,
            "stat": self.op_stat,
            "read": self.op_read,
            "write": self.op_write,
            "delete": self.op_delete,
            "mkdir": self.op_mkdir,
            "glob": self.op_glob,
            "grep": self.op_grep,
            "proc_start": self.op_proc_start,
            "proc_list": self.op_proc_list,
            "proc_stop": self.op_proc_stop,
            "usage": self.op_usage,
        }

    # connections

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # the listener was closed: the daemon is stopping
                time.sleep(ACCEPT_BACKOFF_SECONDS)  # out of fds or memory: until some are free
                continue
            if not self.connections.acquire(blocking=False):
                refuse(sock, "too many connections to the session")
                continue
            try:
                start_thread(self.handle, sock)
            except OpError as exc:
                self.connections.release()
                refuse(sock, exc.message)

    def handle(self, sock: socket.socket) -> None:
        conn = Connection(sock)
        try:
            conn.send(self.answer(conn))
        except ClientGone:
            pass
        finally:
            sock.close()
            self.connections.release()

    def answer(self, conn: Connection) -> dict:
        """The final reply to the connection's request (streamed lines are sent on the way)."""
        try:
            req = conn.read_request(self.max_file_bytes * 4 // 3 + MiB)
            op = req["op"]
            if op == "exec":
                result = self.op_exec(req, conn)
            elif op == "proc_logs":
                result = self.op_proc_logs(req, conn)
            elif op in self.plain:
                result = self.plain[op](req)
            else:
                raise OpError("invalid_request", f"unknown op {op!r}")
            return {"ok": True, **result}
        except OpError as exc:
            return {"ok": False, "code": exc.code, "error": exc.message}
        except ClientGone:
            raise
        except OSError as exc:
            error = os_error(exc, str(exc.filename or ""))
            return {"ok": False, "code": error.code, "error": error.message}
        except Exception as exc:  # noqa: BLE001 — a bug answers, and the daemon lives on
            sys.stderr.write(f"session_agent: {type(exc).__name__}: {exc}\n")
            return {"ok": False, "code": "error", "error": f"internal error: {exc}"}

    # files

    def op_list(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path", ""))
        fd = self.tree.open_listable(parts)
        entries, budget, truncated = [], Budget(), False
        try:
            names = [name for name, _ in dir_entries(fd)]
            for name in names:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue  # deleted meanwhile
                entry = describe(st, parts + [name])
                if len(entries) >= MAX_LIST_ENTRIES or not budget.take(entry):
                    truncated = True
                    break
                entries.append(entry)
        finally:
            os.close(fd)
        return {"entries": entries, "truncated": truncated or len(names) >= MAX_DIR_SCAN}

    def op_stat(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path", ""))
        return describe(self.tree.lstat(parts), parts)

    def op_read(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path"))
        offset = get_number(req, "offset", 0, 0, 2**62, int)
        length = get_number(req, "length", MAX_READ_BYTES, 0, MAX_READ_BYTES, int)
        dir_fd = self.tree.parent(parts)
        try:
            fd, st = open_regular(dir_fd, parts[-1], join(parts))
        finally:
            os.close(dir_fd)
        try:
            data = pread_all(fd, length, offset)
        except OSError as exc:
            raise os_error(exc, join(parts)) from None
        finally:
            os.close(fd)
        return {
            "data": base64.b64encode(data).decode(),
            "size": st.st_size,
            "offset": offset,
            "length": len(data),
            "eof": offset + len(data) >= st.st_size,
        }

    def op_write(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path"))
        path = join(parts)
        encoded = get_str(req, "data", max_chars=2**62)
        if not BASE64.fullmatch(encoded):  # as b64decode(validate=True), without its copy
            raise OpError("invalid_request", "'data' is not valid base64")
        try:
            data = binascii.a2b_base64(encoded)
        except binascii.Error:
            raise OpError("invalid_request", "'data' is not valid base64") from None
        del encoded, req["data"]  # only the decoded bytes stay
        if len(data) > self.max_file_bytes:
            raise OpError(
                "too_large", f"{path}: {len(data)} bytes is over the {self.max_file_bytes} allowed"
            )
        dir_fd = self.tree.parent(parts, create=get_bool(req, "parents", True))
        try:
            write_file(dir_fd, parts[-1], path, data)
        finally:
            os.close(dir_fd)
        return {"path": path, "size": len(data)}

    def op_delete(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path"))
        recursive = get_bool(req, "recursive", False)
        if not parts:
            raise OpError("invalid_path", "the workspace root cannot be deleted")
        dir_fd = self.tree.parent(parts)
        try:
            st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(parts[-1], dir_fd=dir_fd)
            elif recursive:
                remove_tree(dir_fd, parts[-1])
            else:
                try:
                    os.rmdir(parts[-1], dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno != errno.ENOTEMPTY:
                        raise
                    raise OpError(
                        "invalid_request", f"{join(parts)}: directory not empty (ask recursive)"
                    ) from None
        except OSError as exc:
            raise os_error(exc, join(parts)) from None
        finally:
            os.close(dir_fd)
        return {}

    def op_mkdir(self, req: dict) -> dict:
        parts = split_path(get_str(req, "path"))
        if get_bool(req, "parents", True):
            os.close(self.tree.open_dir(parts, create=True))
            return {}
        dir_fd = self.tree.parent(parts)
        try:
            os.mkdir(parts[-1], 0o777, dir_fd=dir_fd)
        except OSError as exc:
            raise os_error(exc, join(parts)) from None
        finally:
            os.close(dir_fd)
        return {}

    def op_glob(self, req: dict) -> dict:
        pattern = get_str(req, "pattern", max_chars=1000)
        base = split_path(get_str(req, "path", ""))
        limit = get_number(req, "limit", 1000, 1, MAX_LIST_ENTRIES, int)
        if not pattern:
            raise OpError("invalid_pattern", "the pattern is empty")
        matches_glob = glob_matcher(pattern)
        deadline = time.monotonic() + MAX_WALK_SECONDS
        matches, budget, truncated = [], Budget(), False
        with closing(walk(self.tree, base)) as entries:
            for visited, (rel, name, _, _) in enumerate(entries):
                if visited >= MAX_WALK_ENTRIES or time.monotonic() > deadline:
                    truncated = True
                    break
                if matches_glob(rel, name):
                    path = join(base + [rel])
                    if len(matches) >= limit or not budget.take(path):
                        truncated = True
                        break
                    matches.append(path)
        return {"matches": matches, "truncated": truncated}

    def op_grep(self, req: dict) -> dict:
        params = grep_params(req)
        worker = [sys.executable, "-I", "-S", os.path.abspath(__file__)]
        worker += ["--grep-worker", "--root", self.tree.root]
        proc = self.groups.spawn(
            worker, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            out, _ = proc.communicate(json.dumps(params).encode(), params["max_seconds"] + 2)
        except subprocess.TimeoutExpired:  # stuck in one regular expression match
            self.groups.kill(proc)
            proc.communicate()
            return grep_result(timed_out=True)
        finally:
            self.groups.reap(proc)
        try:
            answer = json.loads(out)
            if not answer.pop("ok"):
                raise OpError(answer["code"], answer["error"])
        except (ValueError, AttributeError, KeyError):
            raise OpError("error", "the search failed (its worker gave no answer)") from None
        return answer

    def op_usage(self, req: dict) -> dict:
        st = os.statvfs(self.tree.root_fd)
        return {
            "bytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
            "total_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize,
        }

    # commands

    def command_args(self, req: dict) -> tuple[str, int]:
        """The command and an fd of its cwd (the caller closes it): the child changes to
        /proc/self/fd/<fd>, the very directory checked, even if a link was swapped in for
        its path since."""
        command = get_str(req, "command", max_chars=MAX_COMMAND_CHARS)
        if not command.strip() or "\0" in command:
            raise OpError("invalid_request", "'command' must be a non-empty string without NUL")
        return command, self.tree.open_dir(split_path(get_str(req, "cwd", "")))

    def op_exec(self, req: dict, conn: Connection) -> dict:
        stream = get_bool(req, "stream", False)
        timeout = get_number(req, "timeout", 30.0, 0.01, MAX_EXEC_SECONDS)
        cap = MAX_STREAM_OUTPUT if stream else MAX_EXEC_OUTPUT
        max_output = get_number(req, "max_output_bytes", MiB, 0, cap, int)
        command, cwd_fd = self.command_args(req)
        output = Output(max_output, conn.send_chunk if stream else None)
        before = snapshot(self.tree)
        try:
            proc = self.groups.spawn(
                ["/bin/sh", "-c", command],
                cwd=f"/proc/self/fd/{cwd_fd}",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        finally:
            os.close(cwd_fd)
        try:
            reaper = start_thread(self.groups.reap, proc)
        except OpError:
            self.groups.kill(proc)
            self.groups.reap(proc)
            proc.stdout.close()
            proc.stderr.close()
            raise
        deadline = time.monotonic() + timeout
        try:
            timed_out = self.pump_exec(proc, conn, output, deadline)
            # it may have closed its output and still run
            reaper.join(max(0.0, deadline - time.monotonic()))
            timed_out = timed_out or reaper.is_alive()
        finally:
            if reaper.is_alive():
                self.groups.kill(proc)
            proc.stdout.close()
            proc.stderr.close()
            reaper.join()
        return {
            "exit_code": proc.returncode,
            "timed_out": timed_out,
            **output.finish(),
            "changes": changes_between(before, snapshot(self.tree)),
        }

    def pump_exec(
        self, proc: subprocess.Popen, conn: Connection, output: Output, deadline: float
    ) -> bool:
        """Reads the command's output until both pipes end. Kills the group at `deadline`
        (then returns True) or on a flood, reading what is left for DRAIN_SECONDS at most;
        raises ClientGone when the client closed its connection."""
        streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        open_fds = set(streams)
        timed_out = killed = False
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            selector.register(conn.sock, selectors.EVENT_READ)
            while open_fds:
                left = deadline - time.monotonic()
                if left <= 0:
                    if killed:
                        break
                    timed_out = killed = True
                    self.groups.kill(proc)
                    deadline = time.monotonic() + DRAIN_SECONDS
                    continue
                for key, _ in selector.select(left):
                    if key.fileobj is conn.sock:
                        if conn.gone():
                            raise ClientGone()
                        selector.unregister(conn.sock)  # it sent more: stop watching it
                        continue
                    data = os.read(key.fd, CHUNK)
                    if not data:
                        selector.unregister(key.fd)
                        open_fds.discard(key.fd)
                    elif not output.add(streams[key.fd], data) and not killed:
                        killed = True
                        self.groups.kill(proc)
                        deadline = min(deadline, time.monotonic() + DRAIN_SECONDS)
        return timed_out

    # background processes

    def op_proc_start(self, req: dict) -> dict:
        name = get_opt_str(req, "name", max_chars=200)
        command, cwd_fd = self.command_args(req)
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
            read_end, write_end = os.pipe()
        except BaseException:
            os.close(cwd_fd)
            raise
        try:
            popen = self.groups.spawn(
                ["/bin/sh", "-c", command],
                cwd=f"/proc/self/fd/{cwd_fd}",
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            os.close(cwd_fd)
        try:
            log = LogFile(self.log_dir, popen.pid)
        except OSError as exc:
            self.abandon(popen, read_end)
            raise OpError("error", f"cannot create the process's log: {exc}") from None
        proc = Proc(popen, command, name, log)
        try:
            start_thread(self.pump_log, proc, read_end)
        except OpError:
            self.abandon(popen, read_end)
            log.close(delete=True)
            raise
        self.remember(proc)
        try:
            start_thread(self.watch, proc)
        except OpError:
            self.groups.kill(popen)
            self.watch(proc)  # here, then: it ends killed, listed with its output
            raise
        return proc.describe()

    def abandon(self, popen: subprocess.Popen, read_end: int) -> None:
        """Kills and reaps a process that cannot be served."""
        os.close(read_end)
        self.groups.kill(popen)
        self.groups.reap(popen)

    def remember(self, proc: Proc) -> None:
        """Adds `proc`, forgetting an ended one of the same pid and, past MAX_ENDED_PROCS
        ended ones, the oldest (whose logs are deleted)."""
        with self.procs_lock:
            reused = self.procs.pop(proc.pid, None)
            ended = [p for p in self.procs.values() if p.finished]
            pruned = ended[: max(0, len(ended) - MAX_ENDED_PROCS)]
            for gone in pruned:
                del self.procs[gone.pid]
            self.procs[proc.pid] = proc
        if reused is not None:
            forget(reused, delete=False)  # its file names are proc's now
        for gone in pruned:
            forget(gone, delete=True)

    def pump_log(self, proc: Proc, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                with proc.cond:
                    proc.log.append(data)
                    proc.cond.notify_all()
        finally:
            os.close(fd)
            proc.pumped.set()

    def watch(self, proc: Proc) -> None:
        """Waits for the process to end (its group then killed), for its output to be in
        the log (bounded: a process that left the group may hold the pipe), and marks it."""
        code = self.groups.reap(proc.popen)
        proc.pumped.wait(DRAIN_SECONDS)
        with proc.cond:
            proc.exit_code = code
            proc.ended_at = now_iso()
            proc.finished = True
            proc.cond.notify_all()

    def find_proc(self, req: dict) -> Proc:
        pid = get_number(req, "pid", None, 1, 2**31, int)
        with self.procs_lock:
            proc = self.procs.get(pid)
        if proc is None:
            raise OpError("no_such_process", f"no process {pid} was started in this session")
        return proc

    def op_proc_list(self, req: dict) -> dict:
        with self.procs_lock:
            procs = sorted(self.procs.values(), key=lambda p: p.pid)
        listed = []
        for proc in procs:
            with proc.cond:
                listed.append(proc.describe())
        return {"processes": listed}

    def op_proc_stop(self, req: dict) -> dict:
        """SIGTERM to the group, SIGKILL after `timeout`; returns when the process ended."""
        proc = self.find_proc(req)
        timeout = get_number(req, "timeout", 5.0, 0, 300.0)
        with proc.cond:
            if proc.finished:
                return proc.describe()
            proc.stopped = True
        self.groups.signal(proc.popen, signal.SIGTERM)
        with proc.cond:
            if not proc.cond.wait_for(lambda: proc.finished, timeout):
                self.groups.kill(proc.popen)
                if not proc.cond.wait_for(lambda: proc.finished, DRAIN_SECONDS + 30):
                    raise OpError("timeout", f"process {proc.pid} did not end after SIGKILL")
            return proc.describe()

    def op_proc_logs(self, req: dict, conn: Connection) -> dict:
        proc = self.find_proc(req)
        lines = get_number(req, "tail", 200, 0, MAX_TAIL_LINES, int)
        follow = get_bool(req, "follow", False)
        with proc.cond:
            text = tail_text(proc.log.tail(TAIL_MAX_BYTES), lines)
            pos = proc.log.written
        if not follow:
            return {"lines": log_lines(text)}
        if text:
            conn.send_chunk("log", text)
        return self.follow(proc, pos, conn)

    def follow(self, proc: Proc, pos: int, conn: Connection) -> dict:
        """Sends the log from `pos` as it grows until the process ended and all of it was
        sent; an empty chunk after HEARTBEAT_SECONDS of silence."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            with proc.cond:
                proc.cond.wait_for(
                    lambda at=pos: proc.log.written > at or proc.finished or proc.log.closed,
                    HEARTBEAT_SECONDS,
                )
                data, pos = proc.log.read(pos, CHUNK)
                done = (proc.finished and pos >= proc.log.written) or proc.log.closed
                final = proc.describe()
            text = decoder.decode(data, final=done)
            if text or not done:
                conn.send_chunk("log", text)
            if done:
                return final


def forget(proc: Proc, delete: bool) -> None:
    """Closes the log of a process no longer listed (its followers end)."""
    with proc.cond:
        proc.log.close(delete)
        proc.cond.notify_all()


def write_file(dir_fd: int, name: str, path: str, data: bytes) -> None:
    """Writes `data` to a new temporary file beside `name`, then renames it over `name`
    (keeping an existing file's permission bits). Refuses when `name` is not a regular file."""
    mode = None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise OpError("symlink", f"{path}: is a symbolic link (never followed)")
        if not stat.S_ISREG(st.st_mode):
            raise OpError("not_a_file", f"{path}: is a {file_kind(st.st_mode)}, not a file")
        mode = stat.S_IMODE(st.st_mode) & 0o777
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error(exc, path) from None
    temp = f".aimos-write-{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:MiB]) :]
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
        raise os_error(exc, path) from None


def remove_tree(parent_fd: int, name: str) -> None:
    """Deletes directory `name` under `parent_fd` with everything in it, through fds, never
    following a link (a link is deleted itself)."""
    fd = os.open(name, LISTABLE_FLAGS, dir_fd=parent_fd)
    try:
        while entries := dir_entries(fd):  # several scans for a huge directory
            for child, kind in entries:
                if kind == "directory":
                    remove_tree(fd, child)
                else:
                    os.unlink(child, dir_fd=fd)
    except RecursionError:
        raise OpError("invalid_request", f"{name}: too deep to delete here") from None
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


# --- main ----------------------------------------------------------------------------


class Stop(BaseException):
    """Raised in the main thread by SIGTERM, SIGINT or SIGHUP."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the workspace directory")
    parser.add_argument("--socket", help="the Unix socket to listen on")
    parser.add_argument("--max-file-bytes", type=int, default=64 * MiB)
    parser.add_argument("--tmp-dir", default="/tmp", help="where process logs go")
    parser.add_argument("--max-connections", type=int, default=32)
    parser.add_argument("--max-processes", type=int, default=32)
    parser.add_argument("--grep-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.grep_worker and not args.socket:
        parser.error("--socket is required")
    return args


class Listener:
    """The daemon's socket: its file is replaced at start and removed at the end (unless
    another daemon replaced it meanwhile)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)
        self.identity = self._identity()
        self.sock.listen(128)

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def close(self) -> None:
        try:
            if self._identity() == self.identity:
                os.unlink(self.path)
        except OSError:  # the host sealed the control directory: it deletes the socket
            pass
        self.sock.close()


def wait_for_stdin_eof() -> None:
    while True:
        try:
            if not os.read(0, 65536):
                return
        except OSError:
            return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.grep_worker:
        return grep_worker(args.root)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is EFBIG, not death
    try:
        daemon = Daemon(args)
    except OSError as exc:
        sys.stderr.write(f"session_agent: cannot open the workspace {args.root}: {exc}\n")
        return 2
    stopping = []

    def on_signal(signum, frame):
        if not stopping:  # once: the cleanup below must not be interrupted
            stopping.append(signum)
            raise Stop()

    listener = None
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        listener = Listener(args.socket)
        threading.Thread(target=daemon.serve, args=(listener.sock,), daemon=True).start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        wait_for_stdin_eof()
    except Stop:
        pass
    finally:
        stopping.append(0)
        daemon.groups.kill_all()
        if listener is not None:
            listener.close()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
