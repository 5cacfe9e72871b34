"""Every process of one run on this host: finding, limiting, freezing and killing them.

Used by the process backend. A run's processes are found through its cgroups (cgroup v1
memory, pids, freezer, cpu, cpuacct under `<controller>/aimos/<run id>`), else through the
uid it alone runs as, else (unprivileged and unisolated) through its process group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.base import Limits, SandboxError

UID_BASE = 200_000  # runs get uids UID_BASE .. UID_BASE + UID_SLOTS - 1, one per live run
UID_SLOTS = 1000
# Host-wide (not per AIMOS_SANDBOX_ROOT): two installs on one host must not share a uid.
UID_LOCK_DIR = Path("/run/aimos-sandbox/uids")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "pids", "freezer", "cpu", "cpuacct")
CGROUP_PARENT = "aimos"
KILL_DEADLINE_S = 15.0
MB = 1024 * 1024


def _read(path: Path) -> str:
    return path.read_text().strip()


def _pids_in(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def pids_of_uid(uid: int) -> list[int]:
    """Every process whose real uid is `uid` (read from /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as status:
                for line in status:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Cgroups:
    """One run's cgroup v1 directories: limits, freezer, kill, usage."""

    def __init__(self, name: str) -> None:
        self.dirs = {c: CGROUP_ROOT / c / CGROUP_PARENT / name for c in CGROUP_CONTROLLERS}

    @staticmethod
    def available() -> bool:
        """True when we are root and every controller we use is mounted as cgroup v1."""
        return (
            os.geteuid() == 0
            and all((CGROUP_ROOT / c / "cgroup.procs").exists() for c in CGROUP_CONTROLLERS)
            and (CGROUP_ROOT / "memory" / "memory.max_usage_in_bytes").exists()
        )

    def create(self, limits: Limits, *, helpers: int) -> None:
        """Make the directories and set the limits; `helpers` = processes of ours inside
        (bwrap) that count toward pids.max on top of the agent's own."""
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        memory = self.dirs["memory"]
        # tmpfs pages are charged to the run too, so /tmp gets room on top of the heap.
        limit = (limits.memory_mb + limits.tmp_mb) * MB
        (memory / "memory.limit_in_bytes").write_text(str(limit))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limit))
        (self.dirs["pids"] / "pids.max").write_text(str(limits.pids + helpers))
        cpu = self.dirs["cpu"]
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpus * 100000))))

    @property
    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def pids(self) -> list[int]:
        return _pids_in(self.dirs["freezer"] / "cgroup.procs")

    def freeze(self) -> None:
        """Returns when every process of the cgroup is frozen."""
        state = self.dirs["freezer"] / "freezer.state"
        state.write_text("FROZEN")
        deadline = time.monotonic() + 5
        while _read(state) != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.005)

    def thaw(self) -> None:
        (self.dirs["freezer"] / "freezer.state").write_text("THAWED")

    def kill(self) -> None:
        """Freeze (so nothing forks), SIGKILL everyone, thaw (so the kills land)."""
        self.freeze()
        _signal(self.pids(), signal.SIGKILL)
        self.thaw()

    def peak_memory_mb(self) -> float:
        return int(_read(self.dirs["memory"] / "memory.max_usage_in_bytes")) / MB

    def cpu_ms(self) -> int:
        return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) // 1_000_000

    def oom_killed(self) -> bool:
        for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1]) > 0
        return int(_read(self.dirs["memory"] / "memory.failcnt")) > 0

    def remove(self) -> None:
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY while the last task is leaving
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.02)


class Members:
    """Every process of one run: by cgroup when there is one, else by the run's dedicated uid,
    else (unprivileged, unisolated) by process group."""

    def __init__(self, cgroups: Cgroups | None, uid: int | None) -> None:
        self.cgroups = cgroups
        self.uid = uid
        self.pgid: int | None = None

    def pids(self) -> list[int]:
        if self.cgroups is not None:
            return self.cgroups.pids()
        if self.uid is not None:
            return pids_of_uid(self.uid)
        if self.pgid is None:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.pgid:
                        found.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        return found

    def freeze(self) -> None:
        if self.cgroups is not None:
            self.cgroups.freeze()
            return
        # SIGSTOP until a pass finds nobody new: a stopped process cannot fork.
        stopped: set[int] = set()
        while True:
            new = [pid for pid in self.pids() if pid not in stopped]
            if not new:
                return
            _signal(new, signal.SIGSTOP)
            stopped.update(new)

    def thaw(self) -> None:
        if self.cgroups is not None:
            self.cgroups.thaw()
        else:
            _signal(self.pids(), signal.SIGCONT)

    def kill(self) -> None:
        """Returns only when no process of the run is left (or raises SandboxError)."""
        deadline = time.monotonic() + KILL_DEADLINE_S
        while True:
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"processes {pids} of the run survived SIGKILL")
            if self.cgroups is not None:
                self.cgroups.kill()
            else:
                _signal(pids, signal.SIGKILL)
            time.sleep(0.01)


class UidLease:
    """A uid of our range that no live run uses, held until `release()` (a lock file).

    A lock nobody holds means the run that had the uid is over (its worker may have died),
    so whatever still runs under that uid is killed before the uid is reused.
    """

    def __init__(self) -> None:
        locks = UID_LOCK_DIR
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = secrets.randbelow(UID_SLOTS)
        for i in range(UID_SLOTS):
            slot = (start + i) % UID_SLOTS
            fd = os.open(locks / f"{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, UID_BASE + slot
            Members(None, self.uid).kill()
            return
        raise SandboxError(f"all {UID_SLOTS} sandbox uids are in use")

    def release(self) -> None:
        os.close(self.fd)


class Spawner:
    """Starts every sandbox from one long-lived thread of this process.

    A sandbox's launcher dies with its parent (bwrap --die-with-parent, setpriv --pdeathsig),
    so a crashed worker takes its runs along. The kernel ties that to the parent *thread*:
    forking from this thread, which lives as long as the process, keeps a run alive when the
    thread that asked for it ends.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._lock = threading.Lock()
        self._requests: queue.Queue = queue.Queue()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """subprocess.Popen(argv, **kwargs), run on the spawner thread."""
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child (it has no threads)
                self._requests = queue.Queue()
                thread = threading.Thread(
                    target=self._serve, args=(self._requests,), name="sandbox-spawner", daemon=True
                )
                thread.start()
                self._pid = os.getpid()
            requests = self._requests
        answer: queue.Queue = queue.Queue(maxsize=1)
        requests.put((argv, kwargs, answer))
        result = answer.get()
        if isinstance(result, BaseException):
            raise result
        return result

    @staticmethod
    def _serve(requests: queue.Queue) -> None:
        while True:
            argv, kwargs, answer = requests.get()
            try:
                answer.put(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:  # noqa: BLE001 — raised in the caller's thread
                answer.put(exc)


SPAWNER = Spawner()


def hold_lock(path: Path, *, wait: bool = True) -> int:
    """An fd holding an exclusive flock on `path` (created when `wait`); released on close
    or when this process dies. Raises BlockingIOError when held elsewhere and not `wait`."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if wait else 0)
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd
