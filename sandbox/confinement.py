"""Every process of one run on this host: finding, limiting, freezing and killing them.

Used by the process backend. A run's processes are found through its cgroups — cgroup v2
`aimos/<run id>` on a unified hierarchy, else cgroup v1 memory, pids, freezer, cpu, cpuacct
under `<controller>/aimos/<run id>` (`detect` picks) — else through the uid it alone runs as
(from a range checked against the host's users, `uid_range_problem`), else (unprivileged and
unisolated) through its process group.
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

from sandbox.base import Limits, SandboxError, SandboxUnavailable

# Runs get uids base .. base + UID_SLOTS - 1, one per live run (base: AIMOS_SANDBOX_UID_BASE).
UID_BASE = 200_000
UID_SLOTS = 1000
UID_MAX = 2**32 - 2  # (uid_t)-1 means "no uid"
# Host-wide (not per AIMOS_SANDBOX_ROOT): two installs on one host must not share a uid.
UID_LOCK_DIR = Path("/run/aimos-sandbox/uids")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("memory", "pids", "freezer", "cpu", "cpuacct")
CGROUP_PARENT = "aimos"
CPU_PERIOD_US = 100_000
MEMORY_SAMPLE_S = 0.1  # how often memory use is sampled where the kernel keeps no peak
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


class CgroupsUnavailable(SandboxUnavailable):
    """Neither cgroup v2 nor the cgroup v1 controllers can be used here (the message says why)."""


def detect(root: Path = CGROUP_ROOT) -> type[Cgroups]:
    """The kind of cgroups runs get on this host: `CgroupsV2` on a unified hierarchy (with the
    memory, pids and cpu controllers enabled for `<root>/aimos`, done here), else `CgroupsV1`
    when every v1 controller we use is mounted. Raises CgroupsUnavailable naming the cause."""
    if os.geteuid() != 0:
        raise CgroupsUnavailable("managing cgroups needs root")
    if (root / "cgroup.controllers").exists():
        try:
            CgroupsV2.prepare(root)
        except OSError as exc:  # e.g. mounted read-only
            raise CgroupsUnavailable(f"cannot use cgroup v2 at {root}: {exc}") from exc
        return CgroupsV2
    missing = [c for c in CGROUP_CONTROLLERS if not (root / c / "cgroup.procs").exists()]
    if not missing and (root / "memory" / "memory.max_usage_in_bytes").exists():
        return CgroupsV1
    raise CgroupsUnavailable(
        f"no usable cgroups under {root}: it is not a cgroup v2 hierarchy (no "
        f"{root / 'cgroup.controllers'}) and lacks the cgroup v1 controllers "
        f"{', '.join(missing) or 'memory (memory.max_usage_in_bytes)'}"
    )


class Cgroups:
    """One run's cgroups: limits, freezing, killing, usage.

    `detect()` gives the kind this host has; `dirs` holds the run's directories by
    controller ("unified" for v2).
    """

    dirs: dict[str, Path]

    def create(self, limits: Limits, *, helpers: int) -> None:
        """Make the cgroups and set the limits; `helpers` = processes of ours inside (bwrap)
        that count toward the pids limit on top of the agent's own."""
        raise NotImplementedError

    @property
    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join the run."""
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def pids(self) -> list[int]:
        raise NotImplementedError

    def freeze(self) -> None:
        """Returns when every process of the cgroup is frozen."""
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL every member: freeze (so nothing forks), signal everyone, thaw (so the
        kills land)."""
        self.freeze()
        _signal(self.pids(), signal.SIGKILL)
        self.thaw()

    def peak_memory_mb(self) -> float:
        raise NotImplementedError

    def cpu_ms(self) -> int:
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def remove(self) -> None:
        """Delete the run's cgroups (already gone is fine)."""
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

    @staticmethod
    def _memory_limit(limits: Limits) -> int:
        # tmpfs pages are charged to the run too, so the workspace (and /tmp in it) gets room
        # on top of the heap.
        return (limits.memory_mb + limits.workspace_mb) * MB

    @staticmethod
    def _cpu_quota(limits: Limits) -> int:
        """Microseconds of CPU per period of CPU_PERIOD_US."""
        return max(1000, int(limits.cpus * CPU_PERIOD_US))


class CgroupsV1(Cgroups):
    """A run's cgroup v1 directories: memory, pids, freezer, cpu, cpuacct under
    `<root>/<controller>/aimos/<run>`."""

    def __init__(self, name: str, root: Path = CGROUP_ROOT) -> None:
        self.dirs = {c: root / c / CGROUP_PARENT / name for c in CGROUP_CONTROLLERS}

    def create(self, limits: Limits, *, helpers: int) -> None:
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        memory = self.dirs["memory"]
        limit = self._memory_limit(limits)
        (memory / "memory.limit_in_bytes").write_text(str(limit))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no swap
        (self.dirs["pids"] / "pids.max").write_text(str(limits.pids + helpers))
        cpu = self.dirs["cpu"]
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(self._cpu_quota(limits)))

    def pids(self) -> list[int]:
        return _pids_in(self.dirs["freezer"] / "cgroup.procs")

    def freeze(self) -> None:
        state = self.dirs["freezer"] / "freezer.state"
        state.write_text("FROZEN")
        deadline = time.monotonic() + 5
        while _read(state) != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.005)

    def thaw(self) -> None:
        (self.dirs["freezer"] / "freezer.state").write_text("THAWED")

    def peak_memory_mb(self) -> float:
        return int(_read(self.dirs["memory"] / "memory.max_usage_in_bytes")) / MB

    def cpu_ms(self) -> int:
        return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) // 1_000_000

    def oom_killed(self) -> bool:
        for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1]) > 0
        return int(_read(self.dirs["memory"] / "memory.failcnt")) > 0


class CgroupsV2(Cgroups):
    """A run's cgroup on the unified hierarchy: `<root>/aimos/<run>`, with memory (no swap),
    pids and cpu limits; frozen through cgroup.freeze, killed through cgroup.kill."""

    CONTROLLERS = ("memory", "pids", "cpu")

    def __init__(self, name: str, root: Path = CGROUP_ROOT) -> None:
        self.path = root / CGROUP_PARENT / name
        self.dirs = {"unified": self.path}
        self._peak = 0
        self._sampling: threading.Event | None = None

    @classmethod
    def prepare(cls, root: Path = CGROUP_ROOT) -> None:
        """Make `<root>/aimos` with the controllers enabled for its children (and in the
        root's subtree_control first). Raises CgroupsUnavailable saying what is in the way."""
        available = _read(root / "cgroup.controllers").split()
        missing = [c for c in cls.CONTROLLERS if c not in available]
        if missing:
            raise CgroupsUnavailable(
                f"the cgroup v2 hierarchy at {root} lacks the {', '.join(missing)} "
                f"controller(s) (it offers: {' '.join(available) or 'none'})"
            )
        parent = root / CGROUP_PARENT
        cls._enable(root)
        parent.mkdir(exist_ok=True)
        cls._enable(parent)

    @classmethod
    def _enable(cls, cgroup: Path) -> None:
        control = cgroup / "cgroup.subtree_control"
        if set(cls.CONTROLLERS) <= set(_read(control).split()):
            return
        try:
            control.write_text(" ".join(f"+{c}" for c in cls.CONTROLLERS))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupsUnavailable(f"cannot enable controllers in {control}: {exc}") from exc
            pids = _pids_in(cgroup / "cgroup.procs")
            ours = f", this worker (pid {os.getpid()}) among them" if os.getpid() in pids else ""
            raise CgroupsUnavailable(
                f"cannot enable the {', '.join(cls.CONTROLLERS)} controllers in {control}: "
                f"{cgroup} has processes of its own{ours}, and cgroup v2 gives controllers to "
                f"the children of a cgroup only while it has none (the 'no internal "
                f"processes' rule). Start the worker in a child cgroup (e.g. move every pid "
                f"of {cgroup / 'cgroup.procs'} to a new {cgroup / 'init'}), as container "
                "entrypoints do"
            ) from exc

    def create(self, limits: Limits, *, helpers: int) -> None:
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.max").write_text(str(self._memory_limit(limits)))
        if (self.path / "memory.swap.max").exists():  # absent without swap accounting
            (self.path / "memory.swap.max").write_text("0")
        (self.path / "pids.max").write_text(str(limits.pids + helpers))
        (self.path / "cpu.max").write_text(f"{self._cpu_quota(limits)} {CPU_PERIOD_US}")
        if not (self.path / "memory.peak").exists():  # before Linux 5.19
            self._sampling = threading.Event()
            threading.Thread(target=self._sample, name="cgroup-memory", daemon=True).start()

    def _sample(self) -> None:
        assert self._sampling is not None
        while True:
            try:
                self._peak = max(self._peak, int(_read(self.path / "memory.current")))
            except (OSError, ValueError):
                return
            if self._sampling.wait(MEMORY_SAMPLE_S):
                return

    def pids(self) -> list[int]:
        return _pids_in(self.path / "cgroup.procs")

    def freeze(self) -> None:
        (self.path / "cgroup.freeze").write_text("1")
        deadline = time.monotonic() + 5
        while not self.frozen() and time.monotonic() < deadline:
            time.sleep(0.005)

    def frozen(self) -> bool:
        """Whether every process of the cgroup is frozen (cgroup.events says so)."""
        return _keyed(self.path / "cgroup.events").get("frozen") == 1

    def thaw(self) -> None:
        (self.path / "cgroup.freeze").write_text("0")

    def kill(self) -> None:
        kill = self.path / "cgroup.kill"  # Linux 5.14 and later
        if kill.exists():
            kill.write_text("1")
        else:
            super().kill()

    def peak_memory_mb(self) -> float:
        peak = self.path / "memory.peak"
        if peak.exists():
            return int(_read(peak)) / MB
        return max(self._peak, int(_read(self.path / "memory.current"))) / MB

    def cpu_ms(self) -> int:
        return _keyed(self.path / "cpu.stat")["usage_usec"] // 1000

    def oom_killed(self) -> bool:
        return _keyed(self.path / "memory.events").get("oom_kill", 0) > 0

    def remove(self) -> None:
        if self._sampling is not None:
            self._sampling.set()
        super().remove()


def _keyed(path: Path) -> dict[str, int]:
    """A cgroup v2 flat-keyed file ("key value" lines) as a dict."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


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
    """A uid of the range at `base` that no live run uses, held until `release()` (a lock
    file named after the uid, so installs with overlapping ranges share it too).

    A lock nobody holds means the run that had the uid is over (its worker may have died),
    so whatever still runs under that uid is killed before the uid is reused.
    """

    def __init__(self, base: int = UID_BASE) -> None:
        locks = UID_LOCK_DIR
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = secrets.randbelow(UID_SLOTS)
        for i in range(UID_SLOTS):
            uid = base + (start + i) % UID_SLOTS
            fd = os.open(locks / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, uid
            Members(None, self.uid).kill()
            return
        raise SandboxError(f"all {UID_SLOTS} sandbox uids are in use")

    def release(self) -> None:
        os.close(self.fd)


def uid_range_problem(base: int, etc: Path = Path("/etc")) -> str | None:
    """Why the uids base .. base + UID_SLOTS - 1 may not be ours alone, or None: a uid or gid of
    `etc`/passwd, a gid of `etc`/group, or a subordinate range of `etc`/subuid or subgid
    (`name:start:count`, handed to user namespaces) inside it. A run's files and processes
    would be that user's, and the user's processes would be killed as leftovers of a run."""
    last = base + UID_SLOTS - 1
    ours = f"the sandbox's uid range {base}-{last}"
    fix = "set AIMOS_SANDBOX_UID_BASE to a free range"
    if base < 1 or last > UID_MAX:
        return f"{ours} is not a range of valid uids (1-{UID_MAX}); {fix}"
    for name, index, kind in (("passwd", 2, "uid"), ("passwd", 3, "gid"), ("group", 2, "gid")):
        path = etc / name
        for parts in (line.split(":") for line in _lines(path)):
            value = parts[index] if index < len(parts) else ""
            if value.isdigit() and base <= int(value) <= last:
                return f"{path} gives {parts[0]!r} the {kind} {value}, inside {ours}; {fix}"
    for name in ("subuid", "subgid"):
        path = etc / name
        for line in _lines(path):
            owner, _, rest = line.partition(":")
            start, _, count = rest.partition(":")
            if not (start.strip().isdigit() and count.strip().isdigit()):
                continue
            first, end = int(start), int(start) + int(count) - 1
            if int(count) > 0 and first <= last and end >= base:
                return (
                    f"{path} gives {owner!r} the range {first}-{end}, which overlaps {ours}; {fix}"
                )
    return None


def _lines(path: Path) -> list[str]:
    """The entries of a colon-separated /etc file (none when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


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
