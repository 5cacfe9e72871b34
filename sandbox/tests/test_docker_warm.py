"""Warm sandboxes of the docker backend on the real engine: the container a cold run would get,
started ahead with the agent imported, used once, its clock started when it is taken, gone
when it ends or is discarded, found by `kill_run` once taken, and independent of the runner an
older image was built with. (The abuse and walls suites run their docker runs from warm
sandboxes too.)"""

from __future__ import annotations

import io
import tarfile
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import docker
import docker.errors
import pytest

from sandbox.base import Environment, ErrorType, SandboxError, Status
from sandbox.docker_backend import LABEL_OWNER, LABEL_RUN, DockerBackend, owner_label
from sandbox.docker_images import AGENT_DIR, LABEL_ENV, RUNNER
from sandbox.tests.conftest import SESSION_KEY_PREFIX
from sandbox.tests.helpers import OFFLINE, TEST_LIMITS, Recorded, run_agent, token, wait_ready
from sandbox.warm import WarmPool

pytestmark = [pytest.mark.docker, pytest.mark.slow]

AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import os
        import sys
        import time

        print("imported")
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


        def fail(payload):
            raise RuntimeError("no luck")


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


        def nap(seconds):
            time.sleep(seconds)
            return "rested"


        def ticks(payload, ctx):
            for _ in range(600):
                ctx.delta("tick")
                time.sleep(0.05)


        def flood(payload):
            while True:
                sys.stdout.write("x" * 65536 + "\\n")
    """,
}
SLOW_IMPORT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import time

        time.sleep(2.0)

        def handle(payload):
            return "quick"
    """,
}
# The host-side fields of a container that make its walls and limits.
WALLS = (
    "NetworkMode", "Memory", "MemorySwap", "NanoCpus", "PidsLimit", "ReadonlyRootfs", "Tmpfs",
    "ShmSize", "CapDrop", "SecurityOpt", "Init", "Ulimits", "Binds", "LogConfig", "Privileged",
)  # fmt: skip


@pytest.fixture(scope="module")
def docker_backend(engine, tmp_path_factory) -> DockerBackend:
    backend = DockerBackend(build=OFFLINE, egress_root=tmp_path_factory.mktemp("egress"))
    backend.check()
    return backend


def build(backend: DockerBackend, source: Path, files: dict[str, str]) -> Environment:
    """The version of `files` (its image is this session's: the session sweep removes it)."""
    for name, text in files.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return backend.prepare(source, {}, key=f"{SESSION_KEY_PREFIX}warm-{token()}")


@pytest.fixture(scope="module")
def env(docker_backend, tmp_path_factory):
    built = build(docker_backend, tmp_path_factory.mktemp("agent"), AGENT)
    yield built
    docker_backend.remove(built)


@pytest.fixture
def warm(docker_backend, env):
    """`warm(entrypoint)` → a ready warm sandbox of `env`; all are discarded at the end."""
    made = []

    def make(entrypoint: str, limits=TEST_LIMITS, of: Environment | None = None):
        sandbox = docker_backend.warm(of or env, f"agent.main:{entrypoint}", limits=limits)
        made.append(sandbox)
        return wait_ready(sandbox)

    yield make
    for sandbox in made:
        sandbox.run.kill()  # discarded, or the taken run ended: nothing left running


def containers_of(engine: docker.DockerClient, env: Environment) -> list:
    """The containers of `env` the engine still knows, but those it is removing."""
    found = engine.containers.list(all=True, filters={"label": f"{LABEL_ENV}={env.key}"})
    return [c for c in found if c.status != "removing"]


def comparable(events, outcome):
    """Events (in any order: the runner pumps printed lines concurrently) and the outcome."""
    return sorted(map(repr, events)), (outcome.status, outcome.output, outcome.error,
                                       outcome.error_type, outcome.exit_code)  # fmt: skip


@pytest.mark.parametrize("entrypoint", ["handle", "fail"])
def test_a_warm_run_has_the_events_and_outcome_of_a_cold_run(docker_backend, env, entrypoint):
    args = (docker_backend, env, {"q": 1})
    kwargs = {"entrypoint": f"agent.main:{entrypoint}", "state": {"s": 2}}

    cold = run_agent(*args, **kwargs)
    warm = run_agent(*args, **kwargs, warm=True)

    assert comparable(*warm) == comparable(*cold)
    assert cold[1].status in (Status.COMPLETED, Status.FAILED)


def test_a_warm_container_has_the_walls_of_a_cold_one(docker_backend, env, engine, warm):
    sandbox = warm("nap")
    cold = docker_backend.start(env, "agent.main:nap", 30, limits=TEST_LIMITS)
    try:
        warm_config = engine.api.inspect_container(sandbox.run.container_id)
        cold_config = engine.api.inspect_container(cold.container_id)
    finally:
        cold.kill()

    assert {k: warm_config["HostConfig"][k] for k in WALLS} == {
        k: cold_config["HostConfig"][k] for k in WALLS
    }
    assert warm_config["HostConfig"]["NetworkMode"] == "none"
    assert warm_config["Config"]["User"] == cold_config["Config"]["User"] == "10001:10001"
    assert warm_config["Config"]["Cmd"] == cold_config["Config"]["Cmd"]
    labels = warm_config["Config"]["Labels"]  # what the sweep goes by
    assert labels[LABEL_OWNER] == owner_label() and labels[LABEL_RUN]


def test_a_warm_sandbox_is_used_once(warm, engine, env):
    sandbox = warm("traces")
    run = sandbox.take(1)

    assert not sandbox.alive()
    with pytest.raises(SandboxError):
        sandbox.take(2)
    sandbox.discard()  # taken: the run is the caller's now
    assert run.wait(30).status == Status.COMPLETED
    assert containers_of(engine, env) == []


class RecordingBackend(DockerBackend):
    """The docker backend, keeping every warm sandbox it started."""

    def __init__(self, egress_root: Path) -> None:
        super().__init__(build=OFFLINE, egress_root=egress_root)
        self.warmed = []

    def warm(self, env, entrypoint, *, limits):
        sandbox = super().warm(env, entrypoint, limits=limits)
        self.warmed.append(sandbox)
        return sandbox


def test_a_pool_never_hands_a_run_what_a_previous_run_left(docker_backend, env, engine):
    recording = RecordingBackend(docker_backend.egress_root)
    pool = WarmPool(per_key=1)
    runs, outputs = [], []
    try:
        for n in range(3):
            if n:  # the next run finds its warm sandbox ready
                deadline = time.monotonic() + 30
                while not any(s.alive() and s.ready() for s in recording.warmed):
                    assert time.monotonic() < deadline, "the pool made no warm sandbox"
                    time.sleep(0.05)
            runs.append(pool.take(recording, env, "agent.main:traces", n, limits=TEST_LIMITS))
            outcome = runs[-1].wait(30)
            assert outcome.status == Status.COMPLETED, outcome
            outputs.append(outcome.output)
    finally:
        pool.close()

    assert outputs == [{"tmp": [], "workspace": [], "calls": []}] * 3
    warm_runs = {sandbox.run for sandbox in recording.warmed}
    assert runs[0] not in warm_runs and {runs[1], runs[2]} <= warm_runs
    assert containers_of(engine, env) == []


def test_the_clock_of_a_warm_run_starts_when_it_is_taken(docker_backend, tmp_path, warm):
    slow = build(docker_backend, tmp_path, SLOW_IMPORT)
    try:
        limits = replace(TEST_LIMITS, timeout_seconds=1.5)
        _, cold = run_agent(docker_backend, slow, None, limits=limits)
        sandbox = warm("handle", limits=limits, of=slow)
        time.sleep(2.0)  # waiting to be taken does not count either
        outcome = sandbox.take(None).wait(30)
    finally:
        docker_backend.remove(slow)

    assert cold.status == Status.TIMED_OUT  # the 2 s import counted
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "quick")
    assert outcome.duration_ms < 1500


def test_a_warm_run_times_out_counting_from_its_take(warm):
    sandbox = warm("nap", limits=replace(TEST_LIMITS, timeout_seconds=10))
    time.sleep(1.0)

    taken = time.monotonic()
    outcome = sandbox.take(30, timeout_seconds=1.5).wait(30)

    assert outcome.status == Status.TIMED_OUT
    assert 1500 <= outcome.duration_ms < 4000
    assert time.monotonic() - taken >= 1.5


def test_a_warm_run_is_paused_by_the_engine_resumed_and_killed(warm, engine, env):
    sandbox = warm("ticks")
    run = sandbox.take(None)
    recorded = Recorded(run)
    recorded.wait_for("content_delta")

    run.pause()
    paused = engine.api.inspect_container(run.container_id)["State"]["Paused"]
    run.resume()
    seen = len(recorded.of_type("content_delta"))
    recorded.wait_for("content_delta", seen + 1)
    run.kill()

    assert paused is True
    assert recorded.finish().status == Status.CANCELLED
    assert containers_of(engine, env) == []


def test_a_flooding_warm_run_ends_at_the_output_limit_without_a_container(warm, engine, env):
    sandbox = warm("flood")
    run = sandbox.take(None)
    recorded = Recorded(run)

    outcome = recorded.finish(60)

    assert (outcome.status, outcome.error_type) == (Status.FAILED, ErrorType.OUTPUT_LIMIT)
    assert containers_of(engine, env) == []


def test_kill_run_kills_a_warm_run_from_any_process(docker_backend, warm, engine):
    sandbox, untaken = warm("ticks"), warm("ticks")
    run_id = str(uuid.uuid4())
    run = sandbox.take(None, run_id=run_id)
    recorded = Recorded(run)
    recorded.wait_for("content_delta")

    # A backend of its own, as the upkeep process has: nothing of the worker's memory.
    DockerBackend(build=OFFLINE, egress_root=docker_backend.egress_root).kill_run(run_id)

    outcome = recorded.finish(60)  # the agent would tick for 30 s
    assert outcome.status == Status.FAILED, outcome
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(run.container_id)
    assert engine.api.inspect_container(untaken.run.container_id)["State"]["Running"]


@pytest.mark.parametrize("when", ["at once", "once ready"])
def test_a_discarded_warm_sandbox_leaves_no_container(docker_backend, env, engine, when):
    sandbox = docker_backend.warm(env, "agent.main:handle", limits=TEST_LIMITS)
    if when == "once ready":
        wait_ready(sandbox)
        assert engine.api.inspect_container(sandbox.run.container_id)["State"]["Running"]

    sandbox.discard()

    assert not sandbox.alive()
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(sandbox.run.container_id)
    assert containers_of(engine, env) == []
    with pytest.raises(SandboxError):
        sandbox.take(None)


def test_an_image_with_an_older_runner_still_runs_warm(docker_backend, env, engine, warm):
    # An image of before the warm protocol: its own runner answers any request with a result.
    older = """import json, sys
print(json.dumps({"type": "result", "data": {"output": "older runner"}}), flush=True)
"""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(RUNNER.lstrip("/"))
        info.size, info.mode = len(older), 0o644
        tar.addfile(info, io.BytesIO(older.encode()))
    maker = engine.api.create_container(env.location, command=["python3", "-I", RUNNER, AGENT_DIR])
    repository, version = docker_backend.agent_image, f"{SESSION_KEY_PREFIX}older-{token()}"
    try:
        engine.api.put_archive(maker["Id"], "/", archive.getvalue())
        engine.api.commit(maker["Id"], repository=repository, tag=version)
    finally:
        engine.api.remove_container(maker["Id"], force=True)
    try:
        sandbox = warm("handle", of=replace(env, location=f"{repository}:{version}"))
        outcome = sandbox.take(7).wait(30)
    finally:
        engine.images.remove(f"{repository}:{version}", force=True)

    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output == {"echo": 7, "state": None}
