"""Helpers of the sandbox tests: run an agent to its end, watch a run, find its processes."""

from __future__ import annotations

import os
import pwd
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.base import Backend, Environment, Event, Limits, Outcome, Run, WarmSandbox
from sandbox.confinement import pids_of_uid
from sandbox.requirements import BuildRules

# Small limits so abuse ends fast; each test widens what it needs.
TEST_LIMITS = Limits(
    timeout_seconds=20,
    memory_mb=256,
    cpus=1.0,
    pids=32,
    max_output_bytes=256 * 1024,
    max_file_mb=8,
    max_open_files=128,
    workspace_mb=16,
)

# No test reaches a package index: requirements are wheel files inside the package, and the
# index (were pip to ask it) is a host the builds' egress proxy refuses.
OFFLINE = BuildRules(index_url="http://index.invalid/simple", index_hosts=())


@dataclass
class Recorded:
    """Events of a run read in the background (so a test can watch them while it pauses)."""

    run: Run
    events: list[tuple[float, Event]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for event in self.run.events():
            self.events.append((time.monotonic(), event))

    def of_type(self, kind: str) -> list[Event]:
        return [event for _, event in list(self.events) if event.type == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.of_type(kind)) < count:
            assert time.monotonic() < deadline, f"no {count} {kind} events: {self.events}"
            time.sleep(0.01)

    def finish(self, timeout: float = 60) -> Outcome:
        outcome = self.run.wait(timeout)
        self.thread.join(10)
        return outcome


def wait_ready(sandbox: WarmSandbox, timeout: float = 30) -> WarmSandbox:
    """Wait until the warm sandbox's agent is imported (or its import failed)."""
    deadline = time.monotonic() + timeout
    while not sandbox.ready():
        assert sandbox.alive(), "the warm sandbox died before it was ready"
        assert time.monotonic() < deadline, "the warm sandbox never became ready"
        time.sleep(0.01)
    return sandbox


def start_run(
    backend: Backend,
    env: Environment,
    entrypoint: str,
    payload: Any = None,
    *,
    limits: Limits,
    warm: bool = False,
    state: Any = None,
    env_vars: dict[str, str] | None = None,
) -> Run:
    """`backend.start`, or (`warm`) a warm sandbox started, waited for until ready, taken."""
    if not warm:
        return backend.start(
            env, entrypoint, payload, state=state, limits=limits, env_vars=env_vars
        )
    sandbox = wait_ready(backend.warm(env, entrypoint, limits=limits))
    return sandbox.take(payload, state=state, env_vars=env_vars)


def run_agent(
    backend: Backend,
    env: Environment,
    payload: Any = None,
    *,
    entrypoint: str = "agent.main:handle",
    limits: Limits = TEST_LIMITS,
    state: Any = None,
    env_vars: dict[str, str] | None = None,
    within: float | None = None,
    warm: bool = False,
) -> tuple[list[Event], Outcome]:
    """Run to the end, started cold or (`warm`) from a warm sandbox; the outcome must come
    within `within` seconds (default: timeout + 15)."""
    run = start_run(
        backend, env, entrypoint, payload, limits=limits, warm=warm, state=state, env_vars=env_vars
    )
    events = list(run.events())
    outcome = run.wait(within if within is not None else limits.timeout_seconds + 15)
    return events, outcome


def processes_with(token: str) -> list[int]:
    """Processes on this host whose command line contains `token`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                    if token.encode() in cmdline.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def started_with(token: str, timeout: float = 30.0) -> list[int]:
    """The processes whose command line contains `token`, once one does: a process started
    just now may be in the middle of its `exec` (its command line reads empty for that
    moment). AssertionError when none does within `timeout`."""
    deadline = time.monotonic() + timeout
    while not (found := processes_with(token)):
        assert time.monotonic() < deadline, f"no process with {token} in {timeout:g} s"
        time.sleep(0.01)
    return found


def unused_uid() -> int:
    """A uid of the caller's own: no account names it, no process runs as it, and it is far
    from the sandboxes' range, so another test run on this machine does not share it (as it
    would `nobody`)."""
    while True:
        uid = 1_500_000_000 + secrets.randbelow(500_000_000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not pids_of_uid(uid):
                return uid


def frozen(pid: int) -> bool:
    """Whether the kernel holds `pid` frozen: its freezer cgroup (v1) says FROZEN, or its
    unified cgroup (v2) says `frozen 1`."""
    hierarchies = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        hierarchies[controllers] = path.lstrip("/")
    for controllers, path in hierarchies.items():
        if "freezer" in controllers.split(","):
            state = Path("/sys/fs/cgroup/freezer", path, "freezer.state").read_text()
            return state.strip() == "FROZEN"
    events = Path("/sys/fs/cgroup", hierarchies[""], "cgroup.events").read_text()
    return "frozen 1" in events.splitlines()


def leftover_processes(run: Run) -> list[int]:
    """Processes of a finished run still alive on this host (by uid or container cgroup)."""
    uid = getattr(run, "uid", None)
    if uid is not None:
        return pids_of_uid(uid)
    container_id = getattr(run, "container_id", None)
    if container_id is None:
        raise AssertionError(f"no way to find the processes of {run!r}")
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cgroup") as cgroup:
                    if container_id in cgroup.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def log_messages(events: list[Event], source: str | None = None) -> list[str]:
    return [
        e.data["message"]
        for e in events
        if e.type == "log" and (source is None or e.data.get("source") == source)
    ]


def token() -> str:
    return "aimos-test-" + os.urandom(6).hex()


def wheel(
    name: str, version: str, module_code: str, data: dict[str, bytes] | None = None
) -> tuple[str, bytes]:
    """A minimal pure-Python wheel (file name, bytes) providing the module `name` (and the
    files `data`, by path inside the wheel), built in memory: installable without network or
    build tools."""
    import base64
    import hashlib
    import io
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_code.encode(),
        **(data or {}),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()
