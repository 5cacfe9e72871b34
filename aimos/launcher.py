"""`make run`: Redis (embedded unless REDIS_URL is set), migrations, an admin, then the
web server (daphne) and a pool of RQ workers. Ctrl-C stops every process it started.
"""

import os
import signal
import subprocess
import sys
import time

from aimos import embedded_redis

PYTHON = sys.executable


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
    from aimos.jobs import schedule_maintenance

    schedule_maintenance()
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
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited with {child.returncode}; stopping.", file=sys.stderr)
                status = child.returncode or 1
                stopping = True
        time.sleep(0.2)
    _terminate(children.values())
    if own_redis:
        embedded_redis.stop()
    return status


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
