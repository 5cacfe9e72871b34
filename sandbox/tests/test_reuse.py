"""Reusable sandboxes of the process backend, through the pool, in real sandboxes.

One sandbox serves one owner's runs of a version one after another: the agent's module state
carries over (a global counter proves which sandbox served a run), nothing else does — files,
per-run variables, processes. A run that did not end as a run may end kills its sandbox.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from sandbox.base import Status
from sandbox.protocol import ReusedRun
from sandbox.tests.helpers import TEST_LIMITS, Recorded
from sandbox.tests.test_warm import drive_runner, leftovers, make_env  # noqa: F401 — a fixture
from sandbox.warm import ReusePolicy, WarmPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the process sandbox runs as root")

AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import os
        import subprocess
        import sys
        import threading
        import time

        RUNS = 0


        def seen():
            return {
                "tmp": sorted(os.listdir("/tmp")),
                "workspace": sorted(set(os.listdir("/workspace")) - {".tmp"}),
                "shm": sorted(os.listdir("/dev/shm")),
                "R": os.environ.get("R"),
                "M": os.environ.get("M"),
                "pids": sorted(int(pid) for pid in os.listdir("/proc") if pid.isdigit()),
            }


        def handle(payload, ctx):
            global RUNS
            RUNS += 1
            found = {"runs": RUNS, **seen()}
            for folder in ("/tmp", "/workspace", "/dev/shm"):
                with open(os.path.join(folder, "marker"), "w") as out:
                    out.write(str(RUNS))
            os.makedirs("/workspace/locked/inner")
            with open("/workspace/locked/inner/file", "w") as out:
                out.write("x")
            os.chmod("/workspace/locked", 0o500)
            os.environ["LEFT"] = "by the run"
            if payload == "daemon":
                # A session of its own, and a grandchild the init inherits.
                code = "import os, time; os.fork() or time.sleep(300); time.sleep(300)"
                subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
                found["daemons"] = seen()["pids"]
            if payload == "thread":
                threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
            if payload == "fail":
                raise RuntimeError("no luck")
            if payload in ("hang", "flood"):
                ctx.delta("hanging " * (500 if payload == "flood" else 1))
                time.sleep(300)
            if payload == "nap":
                ctx.delta("napping")
                time.sleep(1)
            return found
    """,
}
MANIFEST_M = "from the manifest"
POLICY = ReusePolicy(max_runs=5, idle_seconds=60)


@pytest.fixture
def pool():
    pool = WarmPool()
    yield pool
    pool.close()


@pytest.fixture
def take(process_backend, make_env, pool):  # noqa: F811
    """`take(payload, owner, …)` → a run of AGENT through the pool, reused for `owner`."""
    env = make_env(AGENT)

    def take_run(payload=None, owner="alice", *, policy=POLICY, limits=TEST_LIMITS, **kwargs):
        return pool.take(
            process_backend, env, "agent.main:handle", payload,
            limits=limits, reuse=policy, owner=owner, **kwargs,
        )  # fmt: skip

    return take_run


def finished(run):
    outcome = run.wait(60)
    assert outcome.status == Status.COMPLETED, outcome
    return outcome.output


def test_the_owners_next_run_reuses_the_sandbox_and_finds_nothing_of_the_last(take):
    first = take("daemon", env_vars={"R": "first"})
    assert isinstance(first, ReusedRun)
    one = finished(first)
    second = take(None)
    two = finished(second)

    assert (one["runs"], two["runs"]) == (1, 2)
    assert second.owner is first.owner
    assert (one["R"], two["R"]) == ("first", None)
    assert two["M"] == MANIFEST_M
    assert os.environ.get("LEFT") is None
    assert {key: two[key] for key in ("tmp", "workspace", "shm")} == {
        "tmp": [],
        "workspace": [],
        "shm": [],
    }
    # The daemon and its grandchild were killed: the second run sees what the first began with.
    assert len(one["daemons"]) > len(one["pids"])
    assert two["pids"] == one["pids"]


def test_another_owner_never_gets_the_sandbox(take):
    assert finished(take(None, "alice"))["runs"] == 1
    assert finished(take(None, "bob"))["runs"] == 1
    assert finished(take(None, "alice"))["runs"] == 2
    assert finished(take(None, "bob"))["runs"] == 2


def test_a_run_that_fails_with_its_own_exception_leaves_the_sandbox_reusable(take):
    failed = take("fail")
    assert failed.wait(60).error_type == "exception"
    assert finished(take(None))["runs"] == 2


@pytest.mark.parametrize("end", ["killed", "timed out", "output limit"])
def test_a_run_that_is_stopped_ends_its_sandbox(take, end):
    limits = replace(TEST_LIMITS, max_output_bytes=2048)  # the output limit is part of the key
    assert finished(take(None, limits=limits))["runs"] == 1
    if end == "killed":
        run = take("hang", limits=limits)
        Recorded(run).wait_for("content_delta")
        run.kill()
        status = Status.CANCELLED
    elif end == "timed out":
        run = take("hang", limits=replace(limits, timeout_seconds=2))
        status = Status.TIMED_OUT
    else:
        run = take("flood", limits=limits)
        status = Status.FAILED
    assert run.wait(60).status == status
    assert leftovers(run.owner.sandbox) == []
    assert finished(take(None, limits=limits))["runs"] == 1


def test_a_thread_left_running_ends_the_sandbox(take):
    run = take("thread")
    assert finished(run)["runs"] == 1
    assert leftovers(run.owner.sandbox) == []
    assert finished(take(None))["runs"] == 1


def test_the_runner_refuses_to_reuse_a_sandbox_as_root(tmp_path):
    warm = b'{"mode": "warm", "entrypoint": "agent.main:handle", "reuse": {}}\n'
    run = b'{"mode": "run", "entrypoint": "agent.main:handle", "payload": 7}\n'
    (end,) = drive_runner(tmp_path, warm, run)
    assert end["type"] == "error"
    assert end["data"]["error_type"] == "sandbox_error"
    assert "root" in end["data"]["message"]


def test_a_sandbox_serves_max_runs_runs(take):
    policy = ReusePolicy(max_runs=2, idle_seconds=60)
    runs = []
    for _ in range(3):
        runs.append(take(None, policy=policy))
        finished(runs[-1])
    assert [run.wait().output["runs"] for run in runs] == [1, 2, 1]
    assert leftovers(runs[0].owner.sandbox) == []


def test_an_idle_sandbox_is_discarded(take):
    run = take(None, policy=ReusePolicy(max_runs=5, idle_seconds=0.5))
    finished(run)
    sandbox = run.owner
    assert sandbox.sandbox.wait(15).status == Status.CANCELLED
    assert leftovers(sandbox.sandbox) == []


@pytest.mark.parametrize("how", ["drop", "close"])
def test_drop_and_close_discard_free_and_busy_sandboxes(take, make_env, pool, how):  # noqa: F811
    free = take(None, "alice")
    finished(free)
    busy = take("nap", "bob")
    Recorded(busy).wait_for("content_delta")

    if how == "drop":
        pool.drop(make_env(AGENT).key)
    else:
        pool.close()

    assert free.owner.sandbox.wait(30).status == Status.CANCELLED  # by the pool's thread
    assert leftovers(free.owner.sandbox) == []
    assert finished(busy)["runs"] == 1  # the run goes on to its end; then its sandbox goes
    assert leftovers(busy.owner.sandbox) == []
    assert finished(take(None, "alice"))["runs"] == 1


def test_sandboxes_kept_for_reuse_count_toward_the_total(process_backend, make_env):  # noqa: F811
    pool = WarmPool(per_key=2, total=1)
    env = make_env(AGENT)

    def take(payload, owner):
        return pool.take(
            process_backend, env, "agent.main:handle", payload,
            limits=TEST_LIMITS, reuse=POLICY, owner=owner,
        )  # fmt: skip

    try:
        first = take(None, "alice")
        assert finished(first)["runs"] == 1  # its sandbox is back on its shelf: the one kept
        bob = take(None, "bob")
        assert not isinstance(bob, ReusedRun)  # the total is reached: cold, nothing kept
        assert finished(bob)["runs"] == 1

        busy = take("hang", "alice")  # the one kept sandbox, serving a run
        assert busy.owner is first.owner
        Recorded(busy).wait_for("content_delta")
        meanwhile = take(None, "alice")
        assert not isinstance(meanwhile, ReusedRun)  # none free, none may be made: cold
        assert finished(meanwhile)["runs"] == 1

        busy.kill()  # its sandbox ends with it, and leaves room
        assert busy.wait(60).status == Status.CANCELLED
        again = take(None, "bob")
        assert isinstance(again, ReusedRun) and again.owner is not first.owner
        assert finished(again)["runs"] == 1
        assert finished(take(None, "bob"))["runs"] == 2
    finally:
        pool.close()


def test_without_reuse_every_run_gets_a_fresh_sandbox(process_backend, make_env, pool):  # noqa: F811
    env = make_env(AGENT)
    for _ in range(2):
        run = pool.take(process_backend, env, "agent.main:handle", None, limits=TEST_LIMITS)
        assert finished(run)["runs"] == 1
