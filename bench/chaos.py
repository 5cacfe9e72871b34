"""Runs under faults: the whole platform on its own PostgreSQL database and Redis server, runs
started while workers are killed, Redis restarted and database connections terminated.

    python bench/chaos.py [--runs 200] [--concurrency 8] [--seconds 3] [--kill-every 4]

Everything stays on this machine (loopback only) and the script stops by itself:

- creates the database `aimos_chaos` (dropped at the end) on the PostgreSQL of DATABASE_URL's
  host (default 127.0.0.1:5432, user postgres) and starts `redis-server` on a free loopback port
  (append-only file in a temporary directory, so a restart keeps the queues);
- starts 2 web processes (daphne on two ports), 2 RQ workers of builds and webhooks, 2 run
  workers (many runs each) and the upkeep process,
  with AIMOS_RUN_LEASE_SECONDS=3 and AIMOS_MAINTENANCE_INTERVAL=1;
- runs a webhook receiver on 127.0.0.1 (AIMOS_WEBHOOK_ALLOW_PRIVATE=1) and registers a webhook
  for the executions' terminal events;
- deploys `examples/slow` (it streams a tick every 0.25 s for `--seconds`) and starts `--runs`
  runs, `--concurrency` at a time, alternating between the two web processes;
- meanwhile SIGKILLs a random worker process every `--kill-every` seconds (the pool starts
  another), restarts Redis once and terminates the database's backend connections once.

At the end it prints: runs started, ended per status (and error type), stuck (not terminal
once nothing changed for the lease + upkeep interval + 10 s), executed twice (an execution with
more than one `run_started` event: its agent started twice), runs lost although the process
that held them was not killed, event logs with gaps, webhook deliveries lost (terminal runs
without a delivery of their event). It is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATABASE = "aimos_chaos"
LEASE_S = 3
INTERVAL_S = 1
QUIET_S = LEASE_S + INTERVAL_S + 10  # nothing changed this long: what is not terminal is stuck
DELIVERY_QUIET_S = 30
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
TERMINAL_EVENTS = [
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "execution.timed_out",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- services of its own ------------------------------------------------------------------


class Postgres:
    """The database `aimos_chaos` on the server of DATABASE_URL (its host, port and user)."""

    def __init__(self) -> None:
        url = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"))
        if url.scheme not in ("postgres", "postgresql"):
            url = urlparse("postgres://postgres@127.0.0.1:5432/x")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 5432
        self.user = url.username or "postgres"
        self.password = url.password or ""
        self.url = f"postgres://{self.user}" + (f":{self.password}" if self.password else "")
        self.url += f"@{self.host}:{self.port}/{DATABASE}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(
            ["psql", "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database,
             "-tAc", statement],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def create(self) -> None:
        self.drop()
        self.sql(f"CREATE DATABASE {DATABASE}")

    def drop(self) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")

    def terminate_connections(self) -> int:
        return len(
            self.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{DATABASE}' AND pid <> pg_backend_pid()"
            ).split()
        )


class Redis:
    """A `redis-server` of its own on a free loopback port; `restart()` keeps its data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class Receiver:
    """The webhook receiver on 127.0.0.1: every delivery's (execution id, event type)."""

    def __init__(self) -> None:
        self.received: Counter = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    message = json.loads(body)
                    key = (str(message["data"].get("execution_id")), message["type"])
                except (ValueError, KeyError, AttributeError):
                    key = ("?", "?")
                with receiver.lock:
                    receiver.received[key] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# --- the platform -------------------------------------------------------------------------


def platform_env(postgres: Postgres, redis: Redis, sandbox_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aimos.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis.url,
        "AIMOS_RUN_LEASE_SECONDS": str(LEASE_S),
        "AIMOS_MAINTENANCE_INTERVAL": str(INTERVAL_S),
        "AIMOS_WEBHOOK_ALLOW_PRIVATE": "1",
        "AIMOS_WEBHOOK_RETRY_DELAYS": "1,2,5",
        "AIMOS_SANDBOX_ROOT": str(sandbox_root),
        "THROTTLE_USER_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
    }


def start_platform(
    env: dict[str, str], ports: list[int], workers: int, run_workers: int, logs: Path
) -> dict:
    from aimos.launcher import worker_commands

    python = sys.executable
    commands = {
        **{
            f"web{n}": [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                        "aimos.asgi:application"]
            for n, port in enumerate(ports)
        },
        **worker_commands(workers, run_workers),
        "upkeep": [python, "manage.py", "upkeep"],
    }  # fmt: skip
    children = {}
    for name, command in commands.items():
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 — kept open for the child
        children[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return children


def worker_processes(pool_pid: int) -> dict[int, list[int]]:
    """The pool's worker processes and their work horses (the process that runs a job), each
    with its descendants (a worker's horse dies with it)."""
    import psutil

    found = {}
    try:
        for worker in psutil.Process(pool_pid).children():
            found[worker.pid] = [worker.pid] + [p.pid for p in worker.children(recursive=True)]
            for horse in worker.children():
                if "python" in horse.name():
                    found[horse.pid] = [horse.pid] + [p.pid for p in horse.children(recursive=True)]
    except psutil.Error:
        pass
    return found


def main() -> int:  # noqa: C901, PLR0915 — one script, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="builds and webhooks")
    parser.add_argument("--run-workers", type=int, default=2, help="runs, many each")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each run streams")
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--max-minutes", type=float, default=20.0)
    args = parser.parse_args()
    hard_deadline = time.monotonic() + args.max_minutes * 60

    import requests

    folder = Path(tempfile.mkdtemp(prefix="aimos-chaos-"))
    folder.chmod(0o755)
    (folder / "redis").mkdir()
    (folder / "logs").mkdir()
    sandbox_root = folder / "sb"
    sandbox_root.mkdir(mode=0o755)
    postgres = Postgres()
    redis = Redis(folder / "redis")
    receiver = Receiver()
    children: dict = {}
    report: dict = {}
    try:
        postgres.create()
        redis.start()
        env = platform_env(postgres, redis, sandbox_root)
        own = ("AIMOS_", "DATABASE_", "REDIS_", "DJANGO_", "SECRET_KEY")
        os.environ.update({name: value for name, value in env.items() if name.startswith(own)})
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT, env=env, check=True, timeout=600,
        )  # fmt: skip
        say(f"database {DATABASE} migrated; redis on port {redis.port}; files in {folder}")
        ports = [free_port(), free_port()]
        children = start_platform(env, ports, args.workers, args.run_workers, folder / "logs")
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base in bases:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(f"{base}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{base} did not start; see {folder / 'logs'}")
                time.sleep(0.3)
        say(f"web on ports {ports}, {args.workers} + {args.run_workers} run workers, upkeep")

        import django

        django.setup()
        from accounts.models import User
        from accounts.services import create_api_key
        from agents.tests.packages import example_files, pack_files

        user, _ = User.objects.get_or_create(
            username="chaos", defaults={"email": "chaos@localhost"}
        )
        _, key = create_api_key(user, name="chaos")
        sessions = []
        for _ in bases:
            session = requests.Session()
            session.headers["X-API-Key"] = key
            sessions.append(session)
        api, v1 = sessions[0], f"{bases[0]}/api/v1"

        hook = api.post(
            f"{v1}/webhooks", json={"url": receiver.url, "events": TERMINAL_EVENTS}, timeout=30
        )
        assert hook.status_code == 201, hook.text
        agent = api.post(f"{v1}/agents", json={"name": "chaos-slow"}, timeout=30).json()
        archive = pack_files(example_files("slow"))
        uploaded = api.post(
            f"{v1}/agents/{agent['id']}/versions",
            files={"file": ("slow.tar.gz", archive)},
            timeout=60,
        )
        assert uploaded.status_code in (200, 201, 202), uploaded.text
        deadline = time.monotonic() + 300
        while (
            status := api.get(f"{v1}/agents/{agent['id']}", timeout=30).json()["status"]
        ) not in (
            "ready",
            "failed",
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the agent's build did not end")
            time.sleep(0.5)
        if status != "ready":
            raise SystemExit(f"the agent's build failed; see {folder / 'logs'}")
        say("agent examples/slow deployed")

        # --- faults, in the background ------------------------------------------------
        stop_chaos = threading.Event()
        faults: Counter = Counter()
        killed: set[int] = set()  # every process that died with a killed worker

        def chaos() -> None:
            began = time.monotonic()
            redis_at, postgres_at = began + 12, began + 25
            while not stop_chaos.wait(args.kill_every):
                processes = {
                    **worker_processes(children["workers"].pid),
                    **worker_processes(children["run-workers"].pid),
                }
                if processes:
                    victim = random.choice(list(processes))
                    try:
                        os.kill(victim, signal.SIGKILL)
                        faults["workers killed"] += 1
                        killed.update(processes[victim])
                    except ProcessLookupError:
                        pass
                now = time.monotonic()
                if not faults["redis restarts"] and now > redis_at:
                    redis.restart()
                    faults["redis restarts"] += 1
                    say("redis restarted")
                if not faults["postgres terminations"] and now > postgres_at:
                    count = postgres.terminate_connections()
                    faults["postgres terminations"] += 1
                    faults["postgres connections terminated"] += count
                    say(f"terminated {count} database connections")

        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()

        # --- the runs ---------------------------------------------------------------------
        started: list[str] = []
        refused: Counter = Counter()
        lock = threading.Lock()

        def execute(index: int) -> None:
            n = index % len(bases)
            url = f"{bases[n]}/api/v1/agents/{agent['id']}/execute"
            body = {"input": {"seconds": args.seconds, "interval": 0.25}}
            headers = {"Idempotency-Key": f"chaos-{index}"}
            for attempt in range(20):
                try:
                    response = sessions[n].post(url, json=body, headers=headers, timeout=30)
                except requests.RequestException:
                    response = None
                if response is not None and response.status_code in (200, 201, 202):
                    with lock:
                        started.append(str(response.json()["id"]))
                    # At most `concurrency` runs going at once: follow this one to its end.
                    follow(n, str(response.json()["id"]))
                    return
                time.sleep(min(0.2 * 2**attempt, 3))
            with lock:
                refused[response.status_code if response is not None else "no answer"] += 1

        def follow(n: int, execution_id: str) -> None:
            until = time.monotonic() + args.seconds + 60
            while time.monotonic() < until:
                try:
                    got = sessions[n].get(
                        f"{bases[n]}/api/v1/executions/{execution_id}", timeout=30
                    )
                    if got.ok and got.json()["status"] in TERMINAL:
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.5)

        say(f"starting {args.runs} runs, {args.concurrency} at a time")
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(execute, range(args.runs)))
        stop_chaos.set()
        chaos_thread.join(30)
        say(f"all runs started; faults: {dict(faults)}")

        # --- the end: wait until nothing changes any more -------------------------------
        from django.db import close_old_connections
        from django.db.models import Count, Max

        from executions.models import Execution, ExecutionEvent
        from notifications.models import WebhookDelivery

        def statuses() -> Counter:
            close_old_connections()
            rows = Execution.objects.filter(pk__in=started).values_list("status", "error_type")
            return Counter(rows)

        last, changed = None, time.monotonic()
        while time.monotonic() < hard_deadline:
            now_statuses = statuses()
            if now_statuses != last:
                last, changed = now_statuses, time.monotonic()
            if sum(c for (s, _), c in now_statuses.items() if s not in TERMINAL) == 0:
                break
            if time.monotonic() - changed > QUIET_S:
                break
            time.sleep(1)
        final = statuses()

        events = ExecutionEvent.objects.filter(execution_id__in=started)
        twice = list(
            events.filter(type="run_started")
            .values("execution_id")
            .annotate(n=Count("id"))
            .filter(n__gt=1)
            .values_list("execution_id", flat=True)
        )
        not_terminal = list(
            Execution.objects.filter(pk__in=started)
            .exclude(status__in=TERMINAL)
            .values_list("pk", "status", "attempt")
        )
        # A run may end lost only when the process that held it (`host:pid`) was killed.
        lost_alive = [
            str(pk)
            for pk, worker in Execution.objects.filter(
                pk__in=started, status="failed", error_type="lost"
            ).values_list("pk", "worker")
            if int(worker.rpartition(":")[2] or 0) not in killed
        ]
        failures = Counter(
            Execution.objects.filter(pk__in=started, status="failed").values_list(
                "error_type", "error_message"
            )
        )
        gaps = sum(
            1
            for row in events.values("execution_id").annotate(n=Count("id"), top=Max("seq"))
            if row["n"] != row["top"]
        )
        terminal = Execution.objects.filter(pk__in=started, status__in=TERMINAL)
        expected = {
            (str(pk), "execution.completed" if s == "completed" else f"execution.{s}")
            for pk, s in terminal.values_list("pk", "status")
        }
        # Deliveries wait behind the runs (the `default` queue comes last): wait until every
        # one came or none came for DELIVERY_QUIET_S.
        seen, quiet_since = -1, time.monotonic()
        while time.monotonic() < hard_deadline:
            with receiver.lock:
                received = set(receiver.received)
            if expected <= received or time.monotonic() - quiet_since > DELIVERY_QUIET_S:
                break
            if len(received) != seen:
                seen, quiet_since = len(received), time.monotonic()
            time.sleep(1)
        close_old_connections()
        delivery_statuses = Counter(
            WebhookDelivery.objects.filter(webhook__user=user).values_list("status", flat=True)
        )
        with receiver.lock:
            received = set(receiver.received)
            duplicates = sum(c - 1 for c in receiver.received.values() if c > 1)
        report = {
            "runs started": len(started),
            "runs refused": dict(refused),
            "ended per status": {
                f"{s}/{e}" if e else s: c for (s, e), c in sorted(final.items(), key=str)
            },
            "stuck": sum(c for (s, _), c in final.items() if s not in TERMINAL),
            "executed twice": len(twice),
            "lost although their worker lived": len(lost_alive),
            "event logs with gaps": gaps,
            "webhook deliveries expected": len(expected),
            "webhook deliveries lost": len(expected - received),
            "webhook deliveries repeated": duplicates,
            "webhook deliveries by status in the database": dict(delivery_statuses),
            "faults": dict(faults),
            "detail": {
                "executed twice": [str(pk) for pk in twice],
                "lost although their worker lived": lost_alive,
                "not terminal": [f"{pk} {status} attempt {n}" for pk, status, n in not_terminal],
                "failures": {f"{e}: {m[:120]}": c for (e, m), c in failures.items()},
            },
        }
    finally:
        from aimos.launcher import _terminate

        if children:
            _terminate(children.values(), grace=10)
        redis.stop()
        receiver.server.shutdown()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 — Django may not be set up
            pass
        try:
            postgres.drop()
        except subprocess.CalledProcessError as exc:
            print(f"could not drop {DATABASE}: {exc.stderr}", file=sys.stderr)
        shutil.rmtree(folder / "redis", ignore_errors=True)
        shutil.rmtree(sandbox_root, ignore_errors=True)
        print(f"logs of the platform: {folder / 'logs'}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
