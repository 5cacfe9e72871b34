"""`make run`: Redis (embedded unless REDIS_URL is set), migrations, an admin, a word on what
the sandbox lacks when it cannot run here, then the web server (daphne), the pools of RQ
workers, the upkeep and the session host. Ctrl-C stops every process it started.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aimos import embedded_redis, sandbox_status
from sandbox.base import Backend

PYTHON = sys.executable
# Started again when they exit (a session host's sessions end `failed` then, by the upkeep);
# the others stop the platform when they exit.
RESTARTED = ("upkeep", "sessionhost")
GRACE_S = 15.0  # between SIGTERM and SIGKILL
KILL_WAIT_S = 5.0


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aimos.settings")
    own_redis = not os.environ.get("REDIS_URL") and not embedded_redis.is_running()
    if own_redis:
        embedded_redis.start()
    if not os.environ.get("REDIS_URL"):
        print(f"Redis: embedded, unix://{embedded_redis.socket_path()}")
    import django
    from django.core.management import call_command

    django.setup()
    from django.conf import settings

    call_command("migrate", interactive=False, verbosity=0)
    call_command("ensure_admin")
    notice = sandbox_notice()
    if notice:
        print(notice, file=sys.stderr)
    host = os.environ.get("AIMOS_HOST", "127.0.0.1")
    port = os.environ.get("AIMOS_PORT", "8000")
    commands = {
        "web": [PYTHON, "-m", "daphne", "-b", host, "-p", port, "aimos.asgi:application"],
        **worker_commands(settings.AIMOS_WORKERS, settings.AIMOS_RUN_WORKERS),
        "upkeep": [PYTHON, "manage.py", "upkeep"],
        "sessionhost": [PYTHON, "manage.py", "sessionhost"],
    }
    children = {
        name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in commands.items()
    }
    print(f"AIMOS on http://{host}:{port}/  (API docs /api/docs/, admin /admin/); Ctrl-C stops it.")
    print(f"From a terminal: .venv/bin/aimos login --url http://{host}:{port}")

    stopping = False

    def stop(signum=None, frame=None):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    while not stopping:
        for name, child in list(children.items()):
            if child.poll() is not None and name in RESTARTED and not stopping:
                print(f"{name} exited with {child.returncode}; starting it again.", file=sys.stderr)
                children[name] = subprocess.Popen(commands[name], start_new_session=True)
            elif child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping.", file=sys.stderr)
                status = child.returncode or 1
                stopping = True
        time.sleep(0.2)
    _terminate(children.values())
    if own_redis:
        embedded_redis.stop()
    return status


def worker_commands(workers: int, run_workers: int) -> dict[str, list[str]]:
    """The two worker pools: builds and webhook deliveries (a process forked per job), and
    runs (`aimos.jobs.RunWorker`, many runs per process, never forking)."""
    pool = [PYTHON, "manage.py", "rqworker-pool"]
    return {
        "workers": [*pool, "builds", "default", "--num-workers", str(workers)],
        "run-workers": [*pool, "runs", "--num-workers", str(run_workers),
                        "--worker-class", "aimos.jobs.RunWorker"],
    }  # fmt: skip


def sandbox_notice(backend: Backend | None = None) -> str | None:
    """What to say at start when `backend` (by default the configured one) cannot run on this
    host: what is missing and the command that fixes it. None when it can run."""
    if backend is None:
        status = sandbox_status.sandbox_status()
    else:
        status = sandbox_status.availability(backend)
    if status["available"]:
        return None
    lines = [
        f"WARNING: {status['reason']}",
        "Builds and runs fail until this is fixed; the server keeps serving meanwhile.",
    ]
    if status["fix"]:
        lines.append(f"To fix it, run: {status['fix']}")
    return "\n".join(lines)


def _terminate(children, grace: float = GRACE_S) -> None:
    """Every process started here is gone when this returns: SIGTERM to each child, then after
    `grace` seconds SIGKILL of every process still in its session (each child leads a session
    of its own), so the pool's workers and their work horses (which take a process group of
    their own), and a child stuck in a system call or ignoring SIGTERM, go too."""
    children = list(children)
    for child in children:
        if child.poll() is None:
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        _kill_session(child.pid)
    for child in children:
        try:
            child.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # in an uninterruptible call; SIGKILL is pending
            print(f"process {child.pid} has not ended yet after SIGKILL", file=sys.stderr)


def _kill_session(sid: int) -> None:
    """SIGKILL the process group `sid` and every process of the session `sid`; returns once
    none is left (or after KILL_WAIT_S)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + KILL_WAIT_S
    while True:
        members = session_members(sid)
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not members or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def session_members(sid: int) -> list[int]:
    """Pids of the live (not zombie) processes of the session `sid`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != sid:
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            found.append(pid)
    return found


if __name__ == "__main__":
    sys.exit(main())
