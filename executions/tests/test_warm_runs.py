"""Runs on a stack whose run worker keeps warm sandboxes (`warm_live`): a warm sandbox serves
one run and the next run sees nothing of it (a version that declares reuse: one owner's runs
one after another, its /tmp and workspace wiped between them); a new version or an archived
agent drops its version's sandboxes; controls work on a warm run; a killed worker leaves no
sandbox behind.

Whether a run was warm is seen from inside: its module was imported before the run's own
environment variables were set (a fork's `env`), so at import time it did not see them.
"""

import os
import signal
import time

import pytest

from agents.models import AgentVersion
from agents.tests.packages import pack_files
from executions.tests.live import Client, sandbox_processes, wait_for_events, wait_for_status

pytestmark = pytest.mark.slow

TERMINAL = ["completed", "failed", "cancelled", "timed_out"]
MARKERS = ("/tmp/marker", "/workspace/marker")
MANIFEST = "name: marker\nentrypoint: agent.main:handle\nruntime: python3.11\ntimeout: 60\n"

AGENT = """
import os
import time

VERSION = {version}
AT_IMPORT = os.environ.get("PER_RUN")


def handle(payload, ctx):
    ctx.delta("warm" if AT_IMPORT is None and os.environ.get("PER_RUN") else "cold")
    seen = sorted(path for path in {markers!r} if os.path.exists(path))
    for path in {markers!r}:
        with open(path, "w") as marker:
            marker.write("x")
    ctx.checkpoint({{"n": 1}})
    for _ in range(int((payload or {{}}).get("ticks", 0))):
        ctx.delta("tick")
        time.sleep(0.1)
    return {{"seen": seen, "version": VERSION, "per_run": os.environ.get("PER_RUN")}}
"""


def files(version: int) -> dict[str, str]:
    return {
        "aimos.yaml": MANIFEST,
        "agent/__init__.py": "",
        "agent/main.py": AGENT.format(version=version, markers=MARKERS),
    }


def upload(client: Client, agent_id: str, version: int) -> None:
    archive = pack_files(files(version))
    response = client.post(
        f"/agents/{agent_id}/versions", files={"file": ("marker.tar.gz", archive)}
    )
    assert response.status_code == 201, response.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get(f"/agents/{agent_id}/versions/{version}").json()
        if state["status"] in ("ready", "failed"):
            assert state["status"] == "ready", state["build_log"]
            return
        time.sleep(0.2)
    raise AssertionError("the version was not built")


@pytest.fixture
def client(warm_live, owner):
    return Client(warm_live, owner)


@pytest.fixture
def agent_id(client):
    agent = client.post("/agents", json={"name": "marker"}).json()
    upload(client, agent["id"], 1)
    return agent["id"]


def first_run(client, agent_id, **input_) -> tuple[dict, str]:
    """A run of the agent (cold: nothing is warm yet) and its checkpoint's id."""
    run = client.post(f"/agents/{agent_id}/execute", json={"input": input_, "wait": 60}).json()
    assert run["status"] == "completed", run
    events = client.get(f"/executions/{run['id']}/events").json()
    return run, next(e["data"]["checkpoint_id"] for e in events if e["type"] == "checkpoint")


def fork(client, checkpoint_id: str, n: int, **input_) -> str:
    response = client.post(
        f"/checkpoints/{checkpoint_id}/fork",
        json={"modifications": {"env": {"PER_RUN": f"run-{n}"}, "input": input_}},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def started_as(client, execution_id: str) -> str:
    """ "warm" or "cold", as the run said first."""
    events = wait_for_events(client, execution_id, "content_delta", 1)
    return next(e["data"]["content"] for e in events if e["type"] == "content_delta")


def warm_runs(client, checkpoint_id: str, wanted: int, **input_) -> list[dict]:
    """Forks run one after another until `wanted` of them were warm (a replacement sandbox may
    not be ready yet for the next run, which then starts cold); every run, as it ended."""
    ended, warm = [], 0
    for n in range(40):
        execution_id = fork(client, checkpoint_id, n, **input_)
        warm += started_as(client, execution_id) == "warm"
        ended.append(wait_for_status(client, execution_id, TERMINAL))
        if warm == wanted:
            return ended
    raise AssertionError(f"fewer than {wanted} of 40 runs were warm")


def processes_of(version_location: str) -> list[int]:
    return [pid for pid in sandbox_processes() if _mentions(pid, version_location)]


def _mentions(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return text in cmdline.read().decode(errors="replace")
    except OSError:
        return False


def wait_until(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_a_warm_sandbox_serves_one_run_and_the_next_never_sees_its_files(client, agent_id):
    _, checkpoint_id = first_run(client, agent_id)

    ended = warm_runs(client, checkpoint_id, wanted=3)

    for n, run in enumerate(ended):
        assert run["status"] == "completed", run
        # Every run wrote both markers; none found another's.
        assert run["output"] == {"seen": [], "version": 1, "per_run": f"run-{n}"}


def test_a_new_version_never_gets_the_old_versions_sandboxes_and_drops_them(client, agent_id):
    _, checkpoint_id = first_run(client, agent_id)
    warm_runs(client, checkpoint_id, wanted=1)
    old = AgentVersion.objects.get(agent_id=agent_id, number=1).sandbox_location
    wait_until(lambda: processes_of(old), "version 1 has warm sandboxes")

    upload(client, agent_id, 2)
    run = client.post(f"/agents/{agent_id}/execute", json={"input": {}, "wait": 60}).json()

    assert (run["status"], run["output"]["version"]) == ("completed", 2)
    wait_until(lambda: not processes_of(old), "version 1's warm sandboxes are gone")


def test_archiving_an_agent_drops_its_warm_sandboxes(client, agent_id):
    _, checkpoint_id = first_run(client, agent_id)
    warm_runs(client, checkpoint_id, wanted=1)
    location = AgentVersion.objects.get(agent_id=agent_id, number=1).sandbox_location
    wait_until(lambda: processes_of(location), "the version has warm sandboxes")

    response = client.patch(f"/agents/{agent_id}", json={"status": "archived"})
    assert response.status_code == 200, response.text

    wait_until(lambda: not processes_of(location), "the archived agent's sandboxes are gone")


def test_pause_resume_and_cancel_work_on_a_warm_run(client, agent_id):
    _, checkpoint_id = first_run(client, agent_id)
    for n in range(40):
        execution_id = fork(client, checkpoint_id, n, ticks=600)
        if started_as(client, execution_id) == "warm":
            break
        assert client.post(f"/executions/{execution_id}/cancel").json()["status"] == "cancelled"
    else:
        raise AssertionError("no run was warm")
    wait_for_events(client, execution_id, "content_delta", 3)

    assert client.post(f"/executions/{execution_id}/pause").json()["status"] == "paused"
    assert client.post(f"/executions/{execution_id}/resume").json()["status"] == "running"
    cancelled = client.post(f"/executions/{execution_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    events = client.get(f"/executions/{execution_id}/events", params={"limit": 1000}).json()
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "run_cancelled"


def test_a_killed_run_worker_leaves_no_warm_sandbox_behind(client, agent_id, warm_live):
    _, checkpoint_id = first_run(client, agent_id)
    warm_runs(client, checkpoint_id, wanted=1)
    location = AgentVersion.objects.get(agent_id=agent_id, number=1).sandbox_location
    wait_until(lambda: processes_of(location), "the version has warm sandboxes")
    worker = next(w for w in warm_live.workers if w.kind == "runs")

    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()

    wait_until(lambda: not processes_of(location), "no warm sandbox outlives its worker")
    warm_live.replace_dead_workers()


REUSED_AGENT = """
import os

RUNS = 0


def handle(payload, ctx):
    global RUNS
    RUNS += 1
    seen = sorted(path for path in {markers!r} if os.path.exists(path))
    for path in {markers!r}:
        with open(path, "w") as marker:
            marker.write("x")
    return {{"runs": RUNS, "seen": seen}}
"""


def test_a_reused_sandbox_serves_its_owners_runs_and_wipes_tmp_and_the_workspace(client):
    agent = client.post("/agents", json={"name": "reused"}).json()
    archive = pack_files(
        {
            "aimos.yaml": MANIFEST.replace("name: marker", "name: reused") + "reuse: true\n",
            "agent/__init__.py": "",
            "agent/main.py": REUSED_AGENT.format(markers=MARKERS),
        }
    )
    response = client.post(
        f"/agents/{agent['id']}/versions", files={"file": ("reused.tar.gz", archive)}
    )
    assert response.status_code == 201, response.text
    wait_until(
        lambda: client.get(f"/agents/{agent['id']}").json()["status"] == "ready",
        "the agent is built",
        timeout=120,
    )

    def run() -> dict:
        url = f"/agents/{agent['id']}/execute"
        answer = client.post(url, json={"input": {}, "wait": 60}).json()
        assert answer["status"] == "completed", answer
        return answer["output"]

    # The sandbox goes back to its owner once its runner is ready again; until then a run of
    # the owner gets a sandbox of its own. Each run sees no file of an earlier one.
    outputs = []
    for _ in range(40):
        outputs.append(run())
        if outputs[-1]["runs"] >= 3:
            break
    assert outputs[-1]["runs"] >= 3, outputs
    assert all(output["seen"] == [] for output in outputs), outputs
