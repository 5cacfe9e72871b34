"""Hostile agents on each real backend, started cold and from a warm sandbox (its agent
imported before the run): every case ends with its named outcome in time, leaves no process
behind, and the next normal run still succeeds."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox.base import ErrorType, Status
from sandbox.tests.helpers import (
    TEST_LIMITS,
    Recorded,
    leftover_processes,
    processes_with,
    run_agent,
    start_run,
    token,
)

ABUSE = {
    "agent/__init__.py": "",
    "agent/abuse.py": """
        import os
        import signal
        import socket
        import subprocess
        import sys
        import tempfile
        import time


        def ok(payload):
            return "ok"


        def fork_bomb(payload):
            while True:
                os.fork()


        def allocate(payload):
            block = b"x" * (1 << 30)
            return len(block)


        def allocate_shared(payload):
            # Shared memory escapes RLIMIT_DATA; only a cgroup or container limit stops it.
            import mmap
            block = mmap.mmap(-1, 1 << 30)
            for offset in range(0, len(block), 4096):
                block[offset] = 1
            return len(block)


        def spin(payload):
            while True:
                pass


        def ignore_sigterm(payload):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(1000)


        def endless_stdout(payload):
            while True:
                print("x" * 1000)


        def huge_file(payload):
            with open(os.path.join(tempfile.gettempdir(), "huge"), "wb") as f:
                while True:
                    f.write(b"\\0" * (1 << 20))


        def many_files(payload):
            folder = tempfile.mkdtemp()
            for i in range(10_000):
                with open(os.path.join(folder, str(i)), "w") as f:
                    f.write("x")
            return len(os.listdir(folder))


        def route(host):
            # A UDP connect only looks the route up: nothing is sent, whatever the answer.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((host, 53))
                    return "routed"
                except OSError as exc:
                    return f"failed: {exc}"


        def network(payload):
            # Addresses off this machine are only asked for a route (a DNS lookup or a TCP
            # connect would send a packet, were the wall down); loopback is connected to.
            try:
                with open("/etc/resolv.conf") as conf:
                    servers = [line.split()[1] for line in conf
                               if line.startswith("nameserver") and len(line.split()) > 1]
            except OSError:
                servers = []
            results = {"dns": route(servers[0]) if servers else "failed: no nameserver"}
            for host in ("1.1.1.1", "169.254.169.254"):
                results[f"{host}:80"] = route(host)
            for host, port in [("127.0.0.1", 5432), ("127.0.0.1", 6379)]:
                try:
                    socket.create_connection((host, port), timeout=2).close()
                    results[f"{host}:{port}"] = "connected"
                except OSError as exc:
                    results[f"{host}:{port}"] = f"failed: {exc}"
            return results


        def read_files(paths):
            found = {}
            for path in paths:
                try:
                    with open(path, "rb") as f:
                        found[path] = f.read().decode("utf-8", "replace")
                except OSError as exc:
                    found[path] = None
            return found


        def environment(payload):
            return dict(os.environ)


        def privileges(payload):
            with open("/proc/self/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            return {k: status[k].strip() for k in ("CapEff", "CapPrm", "NoNewPrivs", "Uid")}


        def daemon(marker):
            # Double fork + setsid: the classic way to outlive a parent.
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c",
                             "import time; time.sleep(600)", marker])
                os._exit(0)
            deadline = time.time() + 10
            while time.time() < deadline:
                for pid in os.listdir("/proc"):
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            if marker.encode() in f.read():
                                return "started"
                    except OSError:
                        pass
                time.sleep(0.05)
            return "not started"


        def sleeper(marker, ctx):
            # A child, and a double-forked daemon in a session of its own.
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
            nap = f"{sys.executable} -c 'import time; time.sleep(600)' {marker}"
            subprocess.Popen(["sh", "-c", f"setsid {nap} &"], start_new_session=True)
            deadline = time.time() + 10
            while len(find(marker)) < 2 and time.time() < deadline:
                time.sleep(0.05)
            ctx.delta("started")
            time.sleep(600)


        def find(marker):
            found = []
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            found.append(pid)
                except OSError:
                    pass
            return found


        def leave_file(name):
            for folder in (tempfile.gettempdir(), os.environ["HOME"]):
                with open(os.path.join(folder, name), "w") as f:
                    f.write("left")
            return "written"


        def look_for_file(name):
            return [folder for folder in (tempfile.gettempdir(), os.environ["HOME"])
                    if os.path.exists(os.path.join(folder, name))]


        def ticker(payload, ctx):
            for i in range(payload["ticks"]):
                ctx.delta(repr(time.time()))  # when it was made: the agent's own progress
                time.sleep(payload["every"])
            return "done"
    """,
}


@pytest.fixture(params=["cold", "warm"])
def start(request, backend):
    """Runs started cold or taken from a warm sandbox; every run is killed when the test ends
    (so a failing test leaves nothing running)."""
    runs = []

    def start_either(env, entrypoint, payload=None, **kwargs):
        run = start_run(backend, env, entrypoint, payload, warm=request.param == "warm", **kwargs)
        runs.append(run)
        return run

    yield start_either
    for run in runs:
        run.kill()


@pytest.fixture(scope="module")
def env(make_agent):
    return make_agent(ABUSE, {"entrypoint": "agent.abuse:ok"})


def run_abuse(start, env, name, payload=None, **limits):
    limits = replace(TEST_LIMITS, **limits)
    run = start(env, f"agent.abuse:{name}", payload, limits=limits)
    events = list(run.events())
    outcome = run.wait(limits.timeout_seconds + 15)
    return run, events, outcome


def assert_contained(backend, env, run):
    """No process of the run is left, and a normal run works afterwards."""
    assert leftover_processes(run) == []
    _, outcome = run_agent(backend, env, None, entrypoint="agent.abuse:ok")
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "ok")


@pytest.mark.slow
def test_fork_bomb_hits_the_process_limit(backend, start, env):
    run, _, outcome = run_abuse(start, env, "fork_bomb", timeout_seconds=30)
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.RESOURCE_LIMIT, outcome
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_allocating_a_gibibyte_is_out_of_memory(backend, start, env):
    run, _, outcome = run_abuse(start, env, "allocate", memory_mb=128)
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.OOM_KILLED, outcome
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_filling_a_gibibyte_of_shared_memory_is_out_of_memory(backend, start, env):
    run, _, outcome = run_abuse(start, env, "allocate_shared", memory_mb=128)
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.OOM_KILLED, outcome
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_cpu_spin_is_stopped(backend, start, env):
    run, _, outcome = run_abuse(start, env, "spin", timeout_seconds=2)
    assert outcome.duration_ms < (2 + 10) * 1000
    assert outcome.status == Status.TIMED_OUT or outcome.error_type == ErrorType.RESOURCE_LIMIT
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_sleep_ignoring_sigterm_times_out(backend, start, env):
    run, _, outcome = run_abuse(start, env, "ignore_sigterm", timeout_seconds=2)
    assert outcome.status == Status.TIMED_OUT
    assert 2000 <= outcome.duration_ms < (2 + 10) * 1000
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_endless_stdout_hits_the_output_limit(backend, start, env):
    run, events, outcome = run_abuse(start, env, "endless_stdout", max_output_bytes=100_000)
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.OUTPUT_LIMIT
    assert any(e.type == "error" and "truncated" in e.data["message"] for e in events)
    assert sum(len(e.data.get("message", "")) for e in events if e.type == "log") <= 100_000
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_huge_file_hits_a_resource_limit(backend, start, env):
    run, _, outcome = run_abuse(start, env, "huge_file")
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.RESOURCE_LIMIT, outcome
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_ten_thousand_small_files_are_contained(backend, start, env):
    run, _, outcome = run_abuse(start, env, "many_files")
    assert (
        outcome.status == Status.COMPLETED
        and outcome.output == 10_000
        or (outcome.status == Status.FAILED and outcome.error_type == ErrorType.RESOURCE_LIMIT)
    ), outcome
    assert_contained(backend, env, run)


def test_no_network_egress(backend, start, env):
    run, _, outcome = run_abuse(start, env, "network")
    assert outcome.status == Status.COMPLETED, outcome
    assert set(outcome.output) == {
        "dns",
        "1.1.1.1:80",
        "169.254.169.254:80",
        "127.0.0.1:5432",
        "127.0.0.1:6379",
    }
    for target, result in outcome.output.items():
        assert result.startswith("failed"), (target, result)
    assert_contained(backend, env, run)


@pytest.fixture
def canaries(settings):
    """Files on the host an agent must not read."""
    name = token()
    paths = [Path("/root") / name, Path(settings.VAR_DIR) / name]
    for path in paths:
        path.write_text("canary " + name)
    yield [str(p) for p in paths]
    for path in paths:
        path.unlink()


def test_host_files_are_invisible(start, env, canaries):
    paths = [*canaries, "/proc/1/environ", "/etc/shadow", str(Path.cwd() / "aimos/settings.py")]
    _, _, outcome = run_abuse(start, env, "read_files", paths)
    assert outcome.status == Status.COMPLETED, outcome
    leaked = {p: text for p, text in outcome.output.items() if text and p != "/proc/1/environ"}
    assert leaked == {}
    assert "SECRET_KEY" not in (outcome.output["/proc/1/environ"] or "")
    assert "DATABASE_URL" not in (outcome.output["/proc/1/environ"] or "")


def test_host_secrets_are_not_in_the_environment(start, env):
    assert os.environ.get("SECRET_KEY") and os.environ.get("DATABASE_URL")  # set on the host
    run = start(env, "agent.abuse:environment", None, limits=TEST_LIMITS, env_vars={"GIVEN": "yes"})
    outcome = run.wait(30)
    assert outcome.status == Status.COMPLETED, outcome
    assert outcome.output["GIVEN"] == "yes"
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"):
        assert name not in outcome.output
    assert not any(os.environ[name] in outcome.output.values() for name in ("SECRET_KEY",))


def test_no_capabilities_and_no_new_privileges(start, env):
    _, _, outcome = run_abuse(start, env, "privileges")
    assert outcome.status == Status.COMPLETED, outcome
    assert int(outcome.output["CapEff"], 16) == 0
    assert int(outcome.output["CapPrm"], 16) == 0
    assert outcome.output["NoNewPrivs"] == "1"
    assert outcome.output["Uid"].split()[0] != "0"


@pytest.mark.slow
def test_double_forked_daemon_is_gone_after_the_run(backend, start, env):
    marker = token()
    run, _, outcome = run_abuse(start, env, "daemon", marker)
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "started")
    assert processes_with(marker) == []
    assert_contained(backend, env, run)


def test_files_left_in_tmp_and_home_are_not_seen_by_the_next_run(start, env):
    name = token()
    _, _, first = run_abuse(start, env, "leave_file", name)
    assert (first.status, first.output) == (Status.COMPLETED, "written")
    _, _, second = run_abuse(start, env, "look_for_file", name)
    assert (second.status, second.output) == (Status.COMPLETED, [])


@pytest.mark.slow
def test_paused_run_makes_no_progress_and_resumes(backend, start, env):
    run = start(env, "agent.abuse:ticker", {"ticks": 30, "every": 0.05}, limits=TEST_LIMITS)
    recorded = Recorded(run)
    recorded.wait_for("content_delta", 2)
    run.pause()  # returns once every process of the run is frozen
    paused_at = time.time()
    time.sleep(1.5)  # paused for as long as the 30 ticks take when running
    resumed_at = time.time()
    run.resume()
    outcome = recorded.finish()
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "done")
    made = [float(event.data["content"]) for event in recorded.of_type("content_delta")]
    assert len(made) == 30
    assert [when for when in made if paused_at < when < resumed_at] == []
    assert any(when > resumed_at for when in made)
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_paused_time_does_not_count_toward_the_timeout(start, env):
    limits = replace(TEST_LIMITS, timeout_seconds=3)
    run = start(env, "agent.abuse:ticker", {"ticks": 20, "every": 0.1}, limits=limits)
    recorded = Recorded(run)
    recorded.wait_for("content_delta", 1)
    run.pause()
    time.sleep(4)  # longer than the whole timeout
    run.resume()
    outcome = recorded.finish()
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "done"), outcome
    assert outcome.duration_ms < 3000


@pytest.mark.slow
def test_timeout_ends_the_run(backend, start, env):
    marker = token()
    run, _, outcome = run_abuse(start, env, "sleeper", marker, timeout_seconds=1.5)
    assert outcome.status == Status.TIMED_OUT
    assert outcome.duration_ms < (1.5 + 10) * 1000
    assert processes_with(marker) == []
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_kill_returns_when_every_process_is_gone(backend, start, env):
    marker = token()
    run = start(env, "agent.abuse:sleeper", marker, limits=TEST_LIMITS)
    recorded = Recorded(run)
    recorded.wait_for("content_delta")
    assert len(processes_with(marker)) == 2
    run.kill()
    assert processes_with(marker) == []
    assert leftover_processes(run) == []
    outcome = recorded.finish()
    assert outcome.status == Status.CANCELLED
    assert_contained(backend, env, run)


@pytest.mark.slow
def test_kill_of_a_paused_run(backend, start, env):
    marker = token()
    run = start(env, "agent.abuse:sleeper", marker, limits=TEST_LIMITS)
    recorded = Recorded(run)
    recorded.wait_for("content_delta")
    run.pause()
    run.kill()
    assert processes_with(marker) == []
    assert recorded.finish().status == Status.CANCELLED
    assert_contained(backend, env, run)
