"""Runs end, and leave nothing behind, whatever the agent or the worker does: a run flooding its
output ends within its timeout, and the sandbox of a worker killed with SIGKILL is swept.
Both backends (`-k process`, `-k docker`)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from core.sandbox_settings import sandbox_config
from sandbox.base import Backend, ErrorType, Run, Status
from sandbox.confinement import pids_of_uid
from sandbox.tests.helpers import OFFLINE, TEST_LIMITS, Recorded

pytestmark = pytest.mark.slow

FLOOD = {
    "agent/main.py": """
    def handle(payload):
        while True:
            print("x" * 10000)
    """
}
SLEEPER = {
    "agent/main.py": """
    import time

    def handle(payload):
        time.sleep(600)
    """
}
TIMEOUT_S = 5
# What a run may take past its own clock to be killed and removed (an engine is slow to
# remove a container under load).
MARGIN_S = 20


def _run_containers(backend: Backend, run_id: str) -> list:
    if backend.name != "docker":
        return []
    api = backend.client.api  # type: ignore[attr-defined]
    return api.containers(all=True, filters={"label": f"aimos.run={run_id}"})


def _leftovers(backend: Backend, run: Run, run_id: str) -> list:
    """What of the run is still there: containers, processes of its uid, its directory."""
    found: list = list(_run_containers(backend, run_id))
    uid = getattr(run, "uid", None)
    if uid is not None:
        found += pids_of_uid(uid)
    run_dir = getattr(run, "run_dir", None)
    if run_dir is not None and Path(run_dir).exists():
        found.append(run_dir)
    return found


# 10 MiB (the default cap) is what wedged a docker run: the engine then had a full stream.
@pytest.mark.parametrize("max_output", [64 * 1024, 10 * 1024 * 1024])
def test_a_run_flooding_its_output_ends_within_its_timeout_and_leaves_nothing(
    backend, make_agent, start, max_output
):
    env = make_agent(FLOOD)
    run_id = uuid.uuid4().hex
    limits = replace(TEST_LIMITS, timeout_seconds=TIMEOUT_S, max_output_bytes=max_output)

    began = time.monotonic()
    recorded = Recorded(start(env, "agent.main:handle", None, limits=limits, run_id=run_id))
    outcome = recorded.finish(timeout=TIMEOUT_S + MARGIN_S)
    took = time.monotonic() - began

    assert (outcome.status, outcome.error_type) in {
        (Status.FAILED, ErrorType.OUTPUT_LIMIT),
        (Status.TIMED_OUT, None),
    }, outcome
    assert outcome.duration_ms is not None
    assert outcome.duration_ms <= (TIMEOUT_S + MARGIN_S) * 1000, outcome
    assert took <= TIMEOUT_S + MARGIN_S
    assert _leftovers(backend, recorded.run, run_id) == []


WORKER = """
import json, pickle, sys, time
from sandbox.backends import get_backend

config, env, limits, run_id = pickle.loads(bytes.fromhex(sys.argv[1]))
backend = get_backend(env.backend, config=config)
run = backend.start(env, "agent.main:handle", None, limits=limits, run_id=run_id)
proxy = getattr(run, "proxy", None) or getattr(run, "_proxy", None)
print(json.dumps({
    "run_dir": str(getattr(run, "run_dir", "") or ""),
    "uid": getattr(run, "uid", None),
    "egress": str(proxy.path.parent) if proxy is not None else "",
}), flush=True)
time.sleep(600)
"""


def _config_of(backend: Backend):
    """The settings the `backend` fixture was made with (its root), for a worker-like child."""
    if backend.name == "docker":
        root = backend.egress_root.parent  # type: ignore[attr-defined]
    else:
        root = backend.root  # type: ignore[attr-defined]
    return replace(sandbox_config(), root=root, build=OFFLINE)


def test_the_sandbox_of_a_worker_killed_with_sigkill_is_swept(backend, make_agent):
    env = make_agent(SLEEPER)
    run_id = uuid.uuid4().hex
    limits = replace(TEST_LIMITS, timeout_seconds=120, network=True)
    argument = pickle.dumps((_config_of(backend), env, limits, run_id)).hex()
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, argument],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,
    )
    try:
        line = worker.stdout.readline()
        assert line, "the worker-like child did not start its run"
        started = json.loads(line)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker.stdout.close()
    time.sleep(0.5)
    if backend.name == "docker":
        assert _run_containers(backend, run_id), "the container should outlive its worker"
    else:
        assert Path(started["run_dir"]).exists()

    swept = backend.sweep()

    assert _run_containers(backend, run_id) == []
    if started["uid"] is not None:
        deadline = time.monotonic() + 10
        while pids_of_uid(started["uid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_of_uid(started["uid"]) == []
    if started["run_dir"]:
        assert not Path(started["run_dir"]).exists()
    if started["egress"]:
        assert not Path(started["egress"]).exists()
    assert swept


def test_the_sweep_leaves_a_live_run_alone(backend, make_agent, start):
    env = make_agent(SLEEPER)
    run_id = uuid.uuid4().hex
    run = start(env, "agent.main:handle", None, limits=TEST_LIMITS, run_id=run_id)

    backend.sweep()

    with pytest.raises(TimeoutError):
        run.wait(0.5)
    if backend.name == "docker":
        assert _run_containers(backend, run_id)
    run.kill()
    assert run.wait(10).status == Status.CANCELLED
