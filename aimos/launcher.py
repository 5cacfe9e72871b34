"""`make run`: Redis (embedded unless REDIS_URL is set), migrations, an admin, a word on what
the sandbox lacks when it cannot run here, then the web server (daphne) and a pool of RQ
workers. Ctrl-C stops every process it started.
"""

import os
import signal
import subprocess
import sys
import time

from aimos import embedded_redis, sandbox_status
from sandbox.base import Backend

PYTHON = sys.executable
RESTARTED = ("upkeep",)  # the others stop the platform when they exit


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
    call_command("migrate", interactive=False, verbosity=0)
    call_command("ensure_admin")
    notice = sandbox_notice()
    if notice:
        print(notice, file=sys.stderr)
    host = os.environ.get("AIMOS_HOST", "127.0.0.1")
    port = os.environ.get("AIMOS_PORT", "8000")
    workers = os.environ.get("AIMOS_WORKERS", "4")
    commands = {
        "web": [PYTHON, "-m", "daphne", "-b", host, "-p", port, "aimos.asgi:application"],
        "workers": [
            PYTHON,
            "manage.py",
            "rqworker-pool",
            "builds",
            "runs",
            "default",
            "--num-workers",
            workers,
        ],
        "upkeep": [PYTHON, "manage.py", "upkeep"],
    }
    children = {
        name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in commands.items()
    }
    print(f"AIMOS on http://{host}:{port}/  (API docs /api/docs/, admin /admin/); Ctrl-C stops it.")

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


def _terminate(children) -> None:
    """Every process started here (and its process group) is gone when this returns."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()


if __name__ == "__main__":
    sys.exit(main())
