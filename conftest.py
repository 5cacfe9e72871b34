"""Fixtures shared by every app's tests: three people, API clients, fresh throttle counters."""

import uuid
from pathlib import Path

import pytest
from rest_framework.test import APIClient


@pytest.fixture(autouse=True)
def _fresh_cache(settings):
    """Each test counts its own throttles: a key prefix of its own in the real Redis cache."""
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"aimos-test-{uuid.uuid4().hex}"
    settings.CACHES = caches


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets channel layers of its own: a receive left pending in an earlier test's
    event loop (a socket a failed test never closed) cannot hold the next test's receives."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()


def _make_user(django_user_model, username: str, **extra):
    return django_user_model.objects.create_user(
        username=username,
        email=f"{username}@example.com",
        password="correct-horse-battery",
        **extra,
    )


@pytest.fixture
def owner(db, django_user_model):
    return _make_user(django_user_model, "owner", full_name="Olive Owner")


@pytest.fixture
def other(db, django_user_model):
    return _make_user(django_user_model, "other", full_name="Otto Outsider")


@pytest.fixture
def admin(db, django_user_model):
    return _make_user(django_user_model, "admin", is_staff=True, is_superuser=True)


@pytest.fixture
def api():
    return APIClient()


@pytest.fixture
def owner_api(owner):
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def other_api(other):
    client = APIClient()
    client.force_authenticate(other)
    return client


@pytest.fixture
def admin_api(admin):
    client = APIClient()
    client.force_authenticate(admin)
    return client


@pytest.fixture
def rq_queues():
    """The real RQ queues, emptied of what earlier tests left."""
    import django_rq

    queues = [django_rq.get_queue(name) for name in ("builds", "runs", "default")]
    for queue in queues:
        queue.empty()
    return queues


@pytest.fixture
def drain_queues(rq_queues):
    """Runs a real RQ worker in burst mode, in this process, until the queues are empty; it
    follows the platform workers' rules (aimos.jobs.OwnJobsOnly)."""
    from aimos.jobs import SimpleJSONWorker

    def drain() -> None:
        SimpleJSONWorker(rq_queues, connection=rq_queues[0].connection).work(burst=True)

    return drain


# --- A live stack: daphne and real RQ workers in their own processes ---------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveStack:
    """The web server (daphne), RQ workers, the upkeep and a session host as separate
    processes on the test database. Its sessions live under a folder of its own
    (`AIMOS_SESSION_ROOT`), emptied when it stops.

    Tests that use it need `transactional_db` (rows must be committed to be seen)."""

    # A worker of the `runs` queue (many runs per process) and one of builds and webhooks.
    WORKERS = {
        "runs": ["runs", "--worker-class", "aimos.jobs.RunWorker"],
        "jobs": ["builds", "default", "--with-scheduler"],
    }

    def __init__(self, env: dict) -> None:
        import subprocess
        import sys

        self.env = env
        self.python = sys.executable
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = Path(env["AIMOS_VAR_DIR"]) / "live-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.web = self._spawn(
            "web",
            [
                self.python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "aimos.asgi:application",
            ],
        )
        self.workers = [self.start_worker(kind) for kind in self.WORKERS]
        self.upkeep = self._spawn("upkeep", [self.python, "manage.py", "upkeep"])
        self.sessionhost = self.start_sessionhost()
        self._wait_until_up()
        self.subprocess = subprocess

    def _spawn(self, name: str, argv: list[str]):
        import subprocess

        log = (self.logs / f"{name}-{uuid.uuid4().hex[:6]}.log").open("wb")
        return subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parent,
            start_new_session=True,
        )

    def start_worker(self, kind: str):
        worker = self._spawn(kind, [self.python, "manage.py", "rqworker", *self.WORKERS[kind]])
        worker.kind = kind
        return worker

    def start_sessionhost(self):
        return self._spawn("sessionhost", [self.python, "manage.py", "sessionhost"])

    def _wait_until_up(self) -> None:
        import time

        import requests

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.web.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the live web server did not start; see {self.logs}")

    def replace_dead_workers(self) -> None:
        self.workers = [w if w.poll() is None else self.start_worker(w.kind) for w in self.workers]
        if self.sessionhost.poll() is not None:
            self.sessionhost = self.start_sessionhost()

    def stop(self) -> None:
        import os
        import signal

        processes = [self.web, self.upkeep, self.sessionhost, *self.workers]
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                # The session host stops its sessions first: up to its STOP_SECONDS.
                process.wait(timeout=40 if process is self.sessionhost else 15)
            except Exception:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _remove_sessions(Path(self.env["AIMOS_SESSION_ROOT"]))


def _remove_sessions(root: Path) -> None:
    """Nothing is left of the stack's sessions: every workspace and control directory
    unmounted, and deleted."""
    import shutil

    from sandbox.session import release_control_dir
    from sandbox.workspace_disk import WorkspaceDisk

    for directory in root.iterdir() if root.exists() else []:
        try:
            release_control_dir(directory / "control")
            WorkspaceDisk(directory, 0).remove()
        except Exception as exc:  # noqa: BLE001 — said, and the rest is still removed
            print(f"could not remove the workspace {directory}: {exc}")
    shutil.rmtree(root, ignore_errors=True)


def _database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return (
        f"postgres://{auth}{settings_dict.get('HOST') or '127.0.0.1'}:"
        f"{settings_dict.get('PORT') or 5432}/{settings_dict['NAME']}"
    )


def _redis_db(url: str, offset: int) -> str:
    """The same Redis server, another database (the tests' own number + `offset`, modulo 16):
    live workers must not take the jobs of tests that run their own burst worker, and two
    sessions on different databases do not share their live stacks' queues."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = parse_qs(parts.query)
        query["db"] = [str((int(query.get("db", ["0"])[0]) + offset) % 16)]
        return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    own = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(own + offset) % 16}"))


# Where the live stack's and the fuzzing stack's Redis databases are, from the tests' own.
LIVE_REDIS_OFFSET = 8
FUZZ_REDIS_OFFSET = 4


LIVE_SETTINGS = {
    "AIMOS_RUN_LEASE_SECONDS": "3",
    "AIMOS_MAINTENANCE_INTERVAL": "1",
    "AIMOS_SSE_HEARTBEAT_SECONDS": "1",
    "AIMOS_METRICS_INTERVAL": "1",
    "AIMOS_MAX_PAUSE_SECONDS": "4",
    "THROTTLE_USER_RATE": "10000/min",
    "THROTTLE_ADMIN_RATE": "10000/min",
    "THROTTLE_ANON_RATE": "10000/min",
    "THROTTLE_AUTH_RATE": "10000/min",
    # Every run cold, so that "no process of the run is left" means no sandbox at all; the
    # warm stack (`warm_live`) keeps warm sandboxes.
    "AIMOS_WARM_SANDBOXES": "0",
}
WARM_REDIS_OFFSET = 12


def _stack_env(redis_offset: int, **extra: str) -> dict:
    import os
    import tempfile

    from django.conf import settings
    from django.db import connection

    return {
        **os.environ,
        **LIVE_SETTINGS,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "REDIS_URL": _redis_db(settings.REDIS_URL, redis_offset),
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "AIMOS_VAR_DIR": str(settings.VAR_DIR),
        "AIMOS_SANDBOX": "process",
        # The stack's own: made by its session host when it starts a session, removed when the
        # stack stops.
        "AIMOS_SESSION_ROOT": str(
            Path(tempfile.gettempdir()) / f"aimos-sessions-{uuid.uuid4().hex[:12]}"
        ),
        **extra,
    }


def _start_stack(env: dict) -> LiveStack:
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    return LiveStack(env)


def _use_stack(stack: LiveStack, settings) -> LiveStack:
    """Point the test process at the stack's Redis, with the same short timings."""
    url = stack.env["REDIS_URL"]
    settings.REDIS_URL = url
    settings.RQ_QUEUES = {
        name: {**config, "URL": url} for name, config in settings.RQ_QUEUES.items()
    }
    settings.CHANNEL_LAYERS = {
        "default": {**settings.CHANNEL_LAYERS["default"], "CONFIG": {"hosts": [url]}}
    }
    settings.AIMOS_RUN_LEASE_SECONDS = int(LIVE_SETTINGS["AIMOS_RUN_LEASE_SECONDS"])
    settings.AIMOS_MAX_PAUSE_SECONDS = int(LIVE_SETTINGS["AIMOS_MAX_PAUSE_SECONDS"])
    settings.AIMOS_MAINTENANCE_INTERVAL = int(LIVE_SETTINGS["AIMOS_MAINTENANCE_INTERVAL"])
    settings.AIMOS_SESSION_ROOT = Path(stack.env["AIMOS_SESSION_ROOT"])
    stack.replace_dead_workers()
    return stack


@pytest.fixture(scope="session")
def live_stack(django_db_setup, django_db_blocker):
    """One live stack for the session, on the process sandbox (see LIVE_SETTINGS)."""
    stack = _start_stack(_stack_env(LIVE_REDIS_OFFSET))
    yield stack
    stack.stop()


@pytest.fixture
def live(live_stack, transactional_db, settings):
    """The live stack for one test; the test process uses the same short timings."""
    return _use_stack(live_stack, settings)


@pytest.fixture(scope="module")
def warm_stack(django_db_setup, django_db_blocker):
    """A live stack whose run worker keeps warm sandboxes (two per version), on a Redis
    database of its own, for one test module."""
    stack = _start_stack(_stack_env(WARM_REDIS_OFFSET, AIMOS_WARM_SANDBOXES="2"))
    yield stack
    stack.stop()


@pytest.fixture
def warm_live(warm_stack, transactional_db, settings):
    return _use_stack(warm_stack, settings)
