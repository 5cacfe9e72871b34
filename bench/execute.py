"""Runs of the `echo` agent through the API, beside a bare django-rq job, in the same run.

    python bench/execute.py [--runs 50] [--concurrency 4] [--workers 4]

Starts the whole platform (`python -m aimos.launcher`: daphne and a pool of RQ workers) on a
free port against the configured database and Redis (the embedded defaults unless
DATABASE_URL / REDIS_URL are set), deploys `examples/echo`, then measures:

- latency: POST /api/v1/agents/{id}/execute with `wait` → the completed execution, one at a
  time, `--runs` times (p50, p95);
- throughput: `--runs` executions posted by `--concurrency` clients at once, until the last
  one completed (runs/s);
- baseline: a no-op django-rq job (`enqueue` → its result) on the same workers, `--runs`
  times, and the same throughput measure for no-op jobs.
Figures are printed with their ratio to the baseline. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aimos.settings")
os.environ.setdefault("DEBUG", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def start_platform(port: int, workers: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "AIMOS_PORT": str(port),
        "AIMOS_WORKERS": str(workers),
        "THROTTLE_USER_RATE": "100000/min",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "aimos.launcher"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    import requests

    port = free_port()
    platform = start_platform(port, args.workers)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or platform.poll() is not None:
                sys.exit("the platform did not start")
            time.sleep(0.2)
        time.sleep(2)  # let the worker pool come up

        import django

        django.setup()
        import django_rq

        from accounts.models import User
        from accounts.services import create_api_key
        from agents.tests.packages import example_files, pack_files
        from aimos.jobs import ping

        user, _ = User.objects.get_or_create(
            username="bench", defaults={"email": "bench@localhost"}
        )
        _, key = create_api_key(user, name=f"bench {time.time():.0f}")
        api = requests.Session()
        api.headers["X-API-Key"] = key
        v1 = f"{base}/api/v1"

        agent = api.post(f"{v1}/agents", json={"name": f"echo-{int(time.time())}"}).json()
        archive = pack_files(example_files("echo"))
        api.post(f"{v1}/agents/{agent['id']}/versions", files={"file": ("echo.tar.gz", archive)})
        while api.get(f"{v1}/agents/{agent['id']}").json()["status"] not in ("ready", "failed"):
            time.sleep(0.2)

        def execute(index: int) -> float:
            started = time.perf_counter()
            response = api.post(
                f"{v1}/agents/{agent['id']}/execute", json={"input": {"n": index}, "wait": 60}
            )
            body = response.json()
            assert body["status"] == "completed", body
            return time.perf_counter() - started

        queue = django_rq.get_queue("default")

        def job(index: int) -> float:
            started = time.perf_counter()
            queued = queue.enqueue(ping)  # a job that does nothing
            result = queued.latest_result(timeout=60)
            assert result is not None and result.type == result.Type.SUCCESSFUL
            return time.perf_counter() - started

        for warm in range(3):
            execute(warm)
            job(warm)

        run_latency = [execute(i) for i in range(args.runs)]
        job_latency = [job(i) for i in range(args.runs)]

        def throughput(task) -> float:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(task, range(args.runs)))
            return args.runs / (time.perf_counter() - started)

        run_rate = throughput(execute)
        job_rate = throughput(job)
    finally:
        os.killpg(platform.pid, signal.SIGINT)
        platform.wait(timeout=30)

    def ms(value: float) -> str:
        return f"{value * 1000:8.1f} ms"

    print(f"{args.runs} runs, {args.workers} workers, {args.concurrency} concurrent clients")
    print(f"{'':28}{'execute echo':>14}{'no-op rq job':>16}{'ratio':>9}")
    for label, share in (("latency p50", 0.5), ("latency p95", 0.95)):
        ours, baseline = percentile(run_latency, share), percentile(job_latency, share)
        print(f"{label:28}{ms(ours):>14}{ms(baseline):>16}{ours / baseline:>8.1f}x")
    print(f"{'throughput':28}{run_rate:>10.1f} /s{job_rate:>12.1f} /s{job_rate / run_rate:>8.1f}x")
    print(f"(mean execute {statistics.mean(run_latency) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
