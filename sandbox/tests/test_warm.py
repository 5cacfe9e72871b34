"""Warm sandboxes of the process backend and the pool that keeps them, in real sandboxes.

A warm run is the cold run it replaces (events, outcome, walls) with the agent imported ahead
of it: used once, its clock started when it is taken, nothing of it left when it is discarded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.base import Environment, ErrorType, Limits, SandboxError, Status
from sandbox.confinement import UID_LOCK_DIR, pids_of_uid
from sandbox.process_backend import ProcessBackend, ProcessRun
from sandbox.process_command import cpu_seconds
from sandbox.protocol import RUNNER_PATH
from sandbox.tests.helpers import OFFLINE, TEST_LIMITS, Recorded, run_agent, wait_ready
from sandbox.warm import WarmPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the process sandbox runs as root")

AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import os
        import resource
        import sys
        import time

        print("imported")
        AT_IMPORT = {"M": os.environ.get("M"), "R": os.environ.get("R")}
        CALLS = []


        def handle(payload, ctx):
            ctx.delta("a")
            ctx.tool_call("search", {"q": payload})
            ctx.tool_result("search", ["r1"])
            ctx.log("thinking", level="warning")
            ctx.checkpoint({"step": 1}, label="first")
            ctx.emit("progress", {"pct": 50})
            print("to stderr", file=sys.stderr)
            return {"echo": payload, "state": ctx.state}


        def generate(payload):
            yield "Hel"
            yield "lo"


        def fail(payload):
            raise RuntimeError("no luck")


        def leave(payload):
            sys.exit(3)


        def variables(payload):
            now = {"M": os.environ.get("M"), "R": os.environ.get("R")}
            return {"at_import": AT_IMPORT, "now": now}


        def traces(payload):
            found = {
                "tmp": os.listdir("/tmp"),
                "workspace": sorted(set(os.listdir("/workspace")) - {".tmp"}),
                "calls": list(CALLS),
            }
            CALLS.append(payload)
            for folder in ("/tmp", "/workspace"):
                with open(os.path.join(folder, "marker"), "w") as out:
                    out.write(str(payload))
            return found


        def cpu_limit(payload):
            return list(resource.getrlimit(resource.RLIMIT_CPU))


        def which(payload):
            return "A"


        def ticks(payload, ctx):
            for _ in range(600):
                ctx.delta("tick")
                time.sleep(0.05)
    """,
}
OTHER = {
    "agent/__init__.py": "",
    "agent/main.py": """
        def which(payload):
            return "B"
    """,
}
BROKEN = {
    "agent/__init__.py": "",
    "agent/main.py": """
        print("before the failure")
        import not_installed_anywhere

        def handle(payload):
            return 1
    """,
}
SLOW_IMPORT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import time

        time.sleep(2.0)

        def handle(payload):
            return "quick"

        def nap(seconds):
            time.sleep(seconds)
            return "rested"
    """,
}
MANIFEST = {"env": {"M": "from the manifest"}}


@pytest.fixture(scope="module")
def make_env(process_backend, tmp_path_factory):
    """`make_env(files)` → an Environment of the process backend (built once per files)."""
    built: dict[str, Environment] = {}

    def make(files: dict[str, str]) -> Environment:
        key = "warm-" + hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        if key not in built:
            source = tmp_path_factory.mktemp("warm-src")
            for name, text in files.items():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                (source / name).write_text(textwrap.dedent(text))
            built[key] = process_backend.prepare(source, MANIFEST, key=key)
        return built[key]

    yield make
    for env in built.values():
        process_backend.remove(env)


class RecordingBackend(ProcessBackend):
    """The process backend, keeping every warm sandbox it started (to look for leftovers)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, build=OFFLINE)
        self.warmed = []

    def warm(self, env, entrypoint, *, limits):
        sandbox = super().warm(env, entrypoint, limits=limits)
        self.warmed.append(sandbox)
        return sandbox


@pytest.fixture
def recording(process_backend) -> RecordingBackend:
    return RecordingBackend(process_backend.root)


@pytest.fixture
def pool():
    pool = WarmPool()
    yield pool
    pool.close()


def uid_held(uid: int) -> bool:
    fd = os.open(UID_LOCK_DIR / f"{uid}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def leftovers(run: ProcessRun) -> list:
    """What is left of a sandbox: processes of its uid, its uid's lease, its directory, its
    cgroups."""
    found: list = list(pids_of_uid(run.uid))
    if uid_held(run.uid):
        found.append(f"uid {run.uid} held")
    if run.run_dir.exists():
        found.append(run.run_dir)
    return found + [path for path in run.members.cgroups.dirs.values() if path.exists()]


def ready_sandboxes(
    backend: RecordingBackend, count: int, *, limits: Limits | None = None, timeout: float = 30
) -> list:
    """Wait until `count` warm sandboxes of `backend` (of `limits`) are ready and unused."""
    deadline = time.monotonic() + timeout
    while True:
        ready = [
            s for s in backend.warmed if s.alive() and s.ready() and limits in (None, s.limits)
        ]
        if len(ready) >= count:
            return ready
        assert time.monotonic() < deadline, f"no {count} ready warm sandboxes"
        time.sleep(0.01)


def comparable(events, outcome):
    """Events (in any order: the runner pumps printed lines concurrently) and the outcome."""
    return sorted(map(repr, events)), (outcome.status, outcome.output, outcome.error,
                                       outcome.error_type, outcome.exit_code)  # fmt: skip


def frozen(run: ProcessRun) -> bool:
    cgroups = run.members.cgroups
    if hasattr(cgroups, "frozen"):
        return cgroups.frozen()
    return (cgroups.dirs["freezer"] / "freezer.state").read_text().strip() == "FROZEN"


# --- one warm sandbox --------------------------------------------------------------------


@pytest.mark.parametrize("entrypoint", ["handle", "generate", "fail", "leave"])
def test_a_warm_run_has_the_events_and_outcome_of_a_cold_run(process_backend, make_env, entrypoint):
    env = make_env(AGENT)
    entrypoint = f"agent.main:{entrypoint}"
    kwargs = {"entrypoint": entrypoint, "state": {"n": 1}, "env_vars": {"R": "run"}}
    cold = run_agent(process_backend, env, "q", **kwargs)
    warm = run_agent(process_backend, env, "q", warm=True, **kwargs)
    assert comparable(*warm) == comparable(*cold)


def test_the_runs_variables_are_set_after_the_import_and_the_manifests_before(
    process_backend, make_env
):
    env = make_env(AGENT)
    kwargs = {"entrypoint": "agent.main:variables", "env_vars": {"R": "run"}}
    _, cold = run_agent(process_backend, env, None, **kwargs)
    _, warm = run_agent(process_backend, env, None, warm=True, **kwargs)
    now = {"M": "from the manifest", "R": "run"}
    assert cold.output == {"at_import": now, "now": now}
    assert warm.output == {"at_import": {"M": "from the manifest", "R": None}, "now": now}


def test_a_failed_import_fails_the_warm_run_as_it_fails_a_cold_one(process_backend, make_env):
    env = make_env(BROKEN)
    cold = run_agent(process_backend, env, None, within=30)
    sandbox = wait_ready(process_backend.warm(env, "agent.main:handle", limits=TEST_LIMITS))
    run = sandbox.take(None)
    warm = list(run.events()), run.wait(30)
    assert comparable(*warm) == comparable(*cold)
    assert warm[1].status == Status.FAILED
    assert warm[1].error_type == ErrorType.EXCEPTION
    assert "ModuleNotFoundError" in warm[1].error


def test_the_clock_of_a_warm_run_starts_when_it_is_taken(process_backend, make_env):
    env = make_env(SLOW_IMPORT)
    limits = replace(TEST_LIMITS, timeout_seconds=1.5)
    _, cold = run_agent(process_backend, env, None, limits=limits)
    assert cold.status == Status.TIMED_OUT  # the 2 s import counted

    _, warm = run_agent(process_backend, env, None, limits=limits, warm=True)
    assert (warm.status, warm.output) == (Status.COMPLETED, "quick")
    assert warm.duration_ms < 1500

    _, napping = run_agent(
        process_backend, env, 5, entrypoint="agent.main:nap", limits=limits, warm=True
    )
    assert napping.status == Status.TIMED_OUT
    assert 1500 <= napping.duration_ms < 4000


def test_a_take_shortens_the_timeout_and_the_cpu_limit_with_it(process_backend, make_env):
    env = make_env(AGENT)
    sandbox = wait_ready(process_backend.warm(env, "agent.main:cpu_limit", limits=TEST_LIMITS))
    run = sandbox.take(None, timeout_seconds=5)
    outcome = run.wait(30)
    assert outcome.status == Status.COMPLETED, outcome
    shorter = replace(TEST_LIMITS, timeout_seconds=5)
    assert tuple(outcome.output) == cpu_seconds(shorter)
    assert run.limits == shorter
    _, cold = run_agent(
        process_backend, env, None, entrypoint="agent.main:cpu_limit", limits=shorter
    )
    assert cold.output == outcome.output


def test_a_take_cannot_lengthen_the_timeout(process_backend, make_env):
    env = make_env(AGENT)
    sandbox = process_backend.warm(env, "agent.main:cpu_limit", limits=TEST_LIMITS)
    with pytest.raises(ValueError, match="cannot run for 120 s"):
        sandbox.take(None, timeout_seconds=120)
    assert sandbox.alive()
    sandbox.discard()


def test_a_warm_run_is_paused_resumed_and_killed(process_backend, make_env):
    env = make_env(AGENT)
    sandbox = wait_ready(process_backend.warm(env, "agent.main:ticks", limits=TEST_LIMITS))
    run = sandbox.take(None)
    recorded = Recorded(run)
    recorded.wait_for("content_delta")
    run.pause()
    assert frozen(run)
    run.resume()
    seen = len(recorded.of_type("content_delta"))
    recorded.wait_for("content_delta", seen + 1)
    run.kill()
    assert recorded.finish().status == Status.CANCELLED
    assert leftovers(run) == []


def test_a_warm_sandbox_is_used_once(process_backend, make_env):
    env = make_env(AGENT)
    sandbox = wait_ready(process_backend.warm(env, "agent.main:generate", limits=TEST_LIMITS))
    run = sandbox.take(None)
    assert not sandbox.alive()
    with pytest.raises(SandboxError):
        sandbox.take(None)
    sandbox.discard()  # taken: the run is the caller's now
    assert run.wait(30).output == "Hello"


@pytest.mark.parametrize("when", ["at once", "once ready"])
def test_a_discarded_warm_sandbox_leaves_nothing(process_backend, make_env, when):
    env = make_env(AGENT)
    sandbox = process_backend.warm(env, "agent.main:handle", limits=TEST_LIMITS)
    if when == "once ready":
        wait_ready(sandbox)
        assert pids_of_uid(sandbox.run.uid) != []

    sandbox.discard()

    assert not sandbox.alive()
    assert leftovers(sandbox.run) == []
    with pytest.raises(SandboxError):
        sandbox.take(None)


def test_a_non_serialisable_payload_leaves_the_sandbox_unused(process_backend, make_env):
    env = make_env(AGENT)
    sandbox = process_backend.warm(env, "agent.main:generate", limits=TEST_LIMITS)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        sandbox.take({1, 2})
    assert sandbox.alive()
    sandbox.discard()
    assert leftovers(sandbox.run) == []


# --- the runner's warm protocol, driven directly -------------------------------------------


def drive_runner(tmp_path: Path, *lines: bytes) -> list[dict]:
    """The runner (outside any sandbox: only its protocol is under test) fed `lines`."""
    (tmp_path / "agent").mkdir(exist_ok=True)
    (tmp_path / "agent/__init__.py").write_text("")
    (tmp_path / "agent/main.py").write_text("def handle(payload):\n    return payload\n")
    done = subprocess.run(
        [sys.executable, "-I", "-B", str(RUNNER_PATH), str(tmp_path)],
        input=b"".join(lines),
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


WARM = b'{"mode": "warm", "entrypoint": "agent.main:handle"}\n'


def test_the_runner_runs_a_warm_request(tmp_path):
    run = b'{"mode": "run", "entrypoint": "agent.main:handle", "payload": 7}\n'
    assert drive_runner(tmp_path, WARM, run) == [
        {"type": "ready", "data": {}},
        {"type": "result", "data": {"output": 7}},
    ]


@pytest.mark.parametrize(
    "second",
    [
        b"",  # no run request at all
        b"not json\n",
        b"[1, 2]\n",
        b'{"mode": "run", "entrypoint": "agent.main:other", "payload": 7}\n',
        b'{"mode": "inspect", "entrypoint": "agent.main:handle"}\n',
        b'{"mode": "warm", "entrypoint": "agent.main:handle"}\n',
        b'{"mode": "run", "entrypoint": "agent.main:handle", "env": [1]}\n',
    ],
)
def test_the_runner_refuses_a_malformed_run_request_after_warming(tmp_path, second):
    ready, end = drive_runner(tmp_path, WARM, second)
    assert ready == {"type": "ready", "data": {}}
    assert end["type"] == "error"
    assert end["data"]["error_type"] == "sandbox_error"


# --- the pool ------------------------------------------------------------------------------


def test_a_pool_never_hands_a_run_what_a_previous_run_left(recording, make_env, pool):
    env = make_env(AGENT)
    runs = []
    for n in range(3):
        if n:
            ready_sandboxes(recording, 1)
        runs.append(pool.take(recording, env, "agent.main:traces", n, limits=TEST_LIMITS))
        outcome = runs[-1].wait(30)
        assert outcome.status == Status.COMPLETED, outcome
        assert outcome.output == {"tmp": [], "workspace": [], "calls": []}
    warm_runs = {sandbox.run for sandbox in recording.warmed}
    assert runs[0] not in warm_runs and {runs[1], runs[2]} <= warm_runs


def test_a_pool_serves_a_key_only_its_own_sandboxes(recording, make_env, pool):
    a, b = make_env(AGENT), make_env(OTHER)
    pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    ready_sandboxes(recording, 1)

    other_version = pool.take(recording, b, "agent.main:which", None, limits=TEST_LIMITS)
    other_limits = pool.take(
        recording, a, "agent.main:which", None, limits=replace(TEST_LIMITS, memory_mb=200)
    )
    shorter = pool.take(
        recording, a, "agent.main:which", None, limits=replace(TEST_LIMITS, timeout_seconds=5)
    )

    assert other_version.wait(30).output == "B"
    assert other_limits.wait(30).output == "A"
    assert {other_version, other_limits}.isdisjoint(s.run for s in recording.warmed)
    # The timeout is not part of the key: the run came warm, from a sandbox of its key.
    (source,) = [s for s in recording.warmed if s.run is shorter]
    assert (source.env.key, source.limits) == (a.key, TEST_LIMITS)
    assert shorter.wait(30).output == "A"
    assert shorter.limits.timeout_seconds == 5


def test_a_pool_warms_for_the_longest_timeout_of_a_key(recording, make_env, pool):
    env = make_env(AGENT)
    longer = replace(TEST_LIMITS, timeout_seconds=60)
    pool.take(recording, env, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    ready_sandboxes(recording, 1)
    cold = pool.take(recording, env, "agent.main:which", None, limits=longer)
    assert cold not in {s.run for s in recording.warmed}  # the warm ones run 20 s at most
    assert cold.wait(30).output == "A"
    ready_sandboxes(recording, 1, limits=longer)
    run = pool.take(recording, env, "agent.main:which", None, limits=TEST_LIMITS)
    assert run in {s.run for s in recording.warmed if s.limits == longer}
    assert run.limits == TEST_LIMITS
    assert run.wait(30).output == "A"
    # The sandboxes made for 20 s were given back when the key's timeout grew.
    shorter = [s for s in recording.warmed if s.limits == TEST_LIMITS]
    assert shorter and not any(s.alive() for s in shorter)


def test_a_pool_keeps_no_more_than_its_total(recording, make_env):
    a, b = make_env(AGENT), make_env(OTHER)
    pool = WarmPool(per_key=2, total=1)
    try:
        pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
        ready_sandboxes(recording, 1)
        pool.take(recording, b, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
        # The one slot frees up here; `a`, taken last, gets it, and `b` none.
        pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
        ready_sandboxes(recording, 1)
        assert [s.env.key for s in recording.warmed] == [a.key, a.key]
    finally:
        pool.close()


def test_closing_a_pool_leaves_nothing(recording, make_env):
    pool = WarmPool()
    a, b = make_env(AGENT), make_env(OTHER)
    pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    pool.take(recording, b, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    ready_sandboxes(recording, 4)

    pool.close()

    assert recording.warmed and not any(s.alive() for s in recording.warmed)
    assert [leftovers(s.run) for s in recording.warmed] == [[]] * len(recording.warmed)
    after = pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS)
    assert after.wait(30).output == "A"
    assert after not in {s.run for s in recording.warmed}


def test_dropping_a_version_discards_its_sandboxes_only(recording, make_env, pool):
    a, b = make_env(AGENT), make_env(OTHER)
    pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    pool.take(recording, b, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
    ready_sandboxes(recording, 4)
    dropped = [s for s in recording.warmed if s.env.key == a.key]

    pool.drop(a.key)
    after = pool.take(recording, a, "agent.main:which", None, limits=TEST_LIMITS)

    assert after not in {s.run for s in dropped}  # none is taken once drop() returned
    assert after.wait(30).output == "A"
    for sandbox in dropped:  # the pool's thread discards them
        assert sandbox.run.wait(30).status == Status.CANCELLED
    assert dropped and [leftovers(s.run) for s in dropped] == [[]] * len(dropped)
    assert all(s.alive() for s in recording.warmed if s.env.key == b.key)


def test_an_idle_key_gives_its_sandboxes_back(recording, make_env):
    pool = WarmPool(idle_seconds=1.0)
    try:
        env = make_env(AGENT)
        pool.take(recording, env, "agent.main:which", None, limits=TEST_LIMITS).wait(30)
        ready_sandboxes(recording, 2)
        deadline = time.monotonic() + 15
        while any(s.alive() for s in recording.warmed):
            assert time.monotonic() < deadline, "the idle key kept its sandboxes"
            time.sleep(0.05)
        for sandbox in recording.warmed:
            assert sandbox.run.wait(15).status == Status.CANCELLED
            assert leftovers(sandbox.run) == []
    finally:
        pool.close()
