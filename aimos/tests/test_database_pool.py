"""A web server shares a bounded pool of PostgreSQL connections between its requests, so a
burst of requests cannot exhaust the database's `max_connections`; workers (which fork) keep
their own connections."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from django.conf import settings
from django.db import connection

from conftest import LIVE_REDIS_OFFSET, _database_url, _free_port, _stack_env

pytestmark = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="connection pooling is PostgreSQL's",
)

POOL_SIZE = 2


def python(code: str, env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=settings.BASE_DIR,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_web_server_pools_and_a_worker_does_not(db):
    env = _stack_env(LIVE_REDIS_OFFSET, DATABASE_POOL_SIZE="3")
    web = "import aimos.asgi; from django.db import connection; print(connection.pool.max_size)"
    assert python(web, env) == "3"
    worker = (
        "import django; django.setup(); from django.db import connection; print(connection.pool)"
    )
    assert python(worker, {**env, "DJANGO_SETTINGS_MODULE": "aimos.settings"}) == "None"


def database_connections(process: psutil.Process) -> int:
    port = int(connection.settings_dict.get("PORT") or 5432)
    return sum(1 for c in process.net_connections("tcp") if c.raddr and c.raddr.port == port)


def test_a_burst_of_requests_waits_for_the_pool_instead_of_opening_connections(
    transactional_db, tmp_path
):
    env = _stack_env(
        LIVE_REDIS_OFFSET,
        DATABASE_URL=_database_url(connection.settings_dict),
        DATABASE_POOL_SIZE=str(POOL_SIZE),
        DATABASE_POOL_TIMEOUT="60",
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}/health"
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "aimos.asgi:application",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(settings.BASE_DIR),
    )
    try:
        for _ in range(600):  # up to a minute for the server to listen
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                assert web.poll() is None, (tmp_path / "web.log").read_text()
                time.sleep(0.1)
        process = psutil.Process(web.pid)
        seen: list[int] = []
        burst_over = threading.Event()

        def watch() -> None:
            while not burst_over.is_set():
                seen.append(database_connections(process))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(40) as clients:
                answers = list(clients.map(lambda _: requests.get(url, timeout=120), range(200)))
        finally:
            burst_over.set()
            watcher.join()
        assert [a.status_code for a in answers] == [200] * 200
        assert all(a.json()["checks"]["database"] == "ok" for a in answers)
        assert max(seen) <= POOL_SIZE
        assert max(seen) >= 1  # the watcher saw the pool's connections
    finally:
        web.terminate()
        web.wait(timeout=30)
