"""Runs of the `echo` agent through the API, beside a bare django-rq job, in the same run.

    python bench/execute.py [--runs 50] [--concurrency 4] [--workers 4] [--sleepers 100]
                            [--modes process-warm,process-cold,docker-warm,docker-cold]

Starts the whole platform (`python -m aimos.launcher`: daphne, the pools of RQ workers, upkeep)
on a free port against the configured database and Redis (the embedded defaults unless
DATABASE_URL / REDIS_URL are set), once per mode, each a process tree of its own with its own
environment, killed whole before the next one starts (and at the end, whatever happened).
A mode is a sandbox backend (`AIMOS_SANDBOX`) and how runs get a sandbox: warm (the default),
cold (`AIMOS_WARM_SANDBOXES=0`) or reuse (echo's manifest says `reuse: true`, process backend
only: Docker never reuses); the docker modes run only when `docker info` answers. In each mode
it deploys `examples/echo` and `examples/slow`. It prints, in this order:

1. as before, on the first mode's platform (process warm unless `--modes` says otherwise):
   - latency: POST /api/v1/agents/{id}/execute with `wait` → the completed execution, one at
     a time, `--runs` times (p50, p95);
   - throughput: `--runs` executions posted by `--concurrency` clients at once, until the
     last one completed (runs/s);
   - beside them a no-op django-rq job (`enqueue` → its result) on the same workers, and
     their ratio;
2. the baselines, measured in the same run: the no-op rq job (p50, p95, runs/s at 1, 8 and
   32 clients) and the spawn of a bare Python (`python -S -c pass` with subprocess, p50,
   p95);
3. per mode: p50/p95 of execute with `wait` of echo (`--runs` times, one at a time), their
   ratio to each baseline's p50, and runs/s at 1 client (those same runs back to back), 8
   and 32 clients (`--runs` runs each) with the ratio of the rq job's runs/s to it;
4. per mode: `--sleepers` runs of slow with {"seconds": 5, "interval": 5} (one tick, then
   5 s asleep) posted at once without `wait` (202), the time until the last one ended (the
   count of active runs polled every 0.2 s), how many completed, and the platform's peak
   memory meanwhile: the summed RSS of the launcher's process tree (web, workers, upkeep,
   their sandboxes), the embedded Redis when there is one, and on docker the processes of
   the platform's containers and their shims, sampled every 0.2 s;
5. the project's targets beside the figures measured, and whether the warm figures are
   only cold fallback (warm p50 within noise of cold p50);
6. the machine's cores and its load average at the start and at the end.
The client asks a 503 (database or Redis briefly away) again after its Retry-After, runs
started with an Idempotency-Key so that no run starts twice; how many 503s there were is said
under the tables, as are RQ workers of another platform found on the same Redis database
(they would take the platform's jobs). Nothing is asserted. A mode that fails prints its
error and where its platform's log is (the logs are kept only then).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aimos.settings")
os.environ.setdefault("DEBUG", "1")

import psutil  # noqa: E402
import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

from aimos import embedded_redis  # noqa: E402
from aimos.launcher import _kill_session  # noqa: E402

CLIENTS = (1, 8, 32)  # the throughput measures; 1 is the latency runs back to back
SLEEPER_INPUT = {"seconds": 5, "interval": 5}
SAMPLE_SECONDS = 0.2
STOP_WAIT_S = 45.0  # the launcher's own grace (15 s) and its workers' (10 s), with room
GB = 1e9
NOISE = 0.15  # warm p50 within this share of cold p50: the same within noise


@dataclass(frozen=True)
class Mode:
    backend: str  # process | docker
    kind: str  # warm | cold | reuse

    @property
    def name(self) -> str:
        return f"{self.backend} {self.kind}"

    @property
    def env(self) -> dict[str, str]:
        cold = {"AIMOS_WARM_SANDBOXES": "0"} if self.kind == "cold" else {}
        return {"AIMOS_SANDBOX": self.backend, **cold}

    @classmethod
    def parse(cls, text: str) -> Mode:
        if text.strip() not in ALL_MODES.split(","):
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {ALL_MODES}")
        backend, _, kind = text.strip().partition("-")
        return cls(backend, kind)


ALL_MODES = "process-warm,process-cold,process-reuse,docker-warm,docker-cold"


@dataclass
class Sleepers:
    error: str | None = None
    posted_s: float = 0.0
    done_s: float | None = None  # None: still active at the deadline
    completed: int = 0
    peak_bytes: int = 0
    peak_processes: int = 0


@dataclass
class ModeResult:
    mode: Mode
    latency: list[float] = field(default_factory=list)
    rates: dict[int, float] = field(default_factory=dict)
    sleepers: Sleepers | None = None
    error: str | None = None
    log: Path | None = None
    foreign_workers: int = 0  # RQ workers of another platform on the same Redis database
    retried: int = 0  # 503 answers asked again


@dataclass
class Baselines:
    mode: Mode  # the platform whose workers ran the rq jobs
    job_latency: list[float] = field(default_factory=list)
    job_rates: dict[int, float] = field(default_factory=dict)
    spawn_latency: list[float] = field(default_factory=list)


@dataclass
class Legacy:
    """The figures of the first table (the script's original output)."""

    run_latency: list[float]
    job_latency: list[float]
    run_rate: float
    job_rate: float


# --- measures ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def one_at_a_time(task, runs: int) -> tuple[list[float], float]:
    """Each call's seconds, and the calls per second back to back."""
    started = time.perf_counter()
    seconds = [task(i) for i in range(runs)]
    return seconds, runs / (time.perf_counter() - started)


def throughput(task, runs: int, clients: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(task, range(runs)))
    return runs / (time.perf_counter() - started)


def rates(task, runs: int, back_to_back: float) -> dict[int, float]:
    return {n: back_to_back if n == 1 else throughput(task, runs, n) for n in CLIENTS}


def spawn_python(index: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-S", "-c", "pass"], check=True)
    return time.perf_counter() - started


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


# --- the platform --------------------------------------------------------------------------


class Platform:
    """One `python -m aimos.launcher` process tree. `processes()` is the tree as it is now and
    remembers every process and session it has seen, so `stop()` kills all of them."""

    def __init__(self, mode: Mode, port: int, workers: int, log: Path) -> None:
        self.mode, self.port, self.log = mode, port, log
        self.base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "AIMOS_PORT": str(port),
            "AIMOS_WORKERS": str(workers),
            "THROTTLE_USER_RATE": "100000/min",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("AIMOS_WARM_SANDBOXES", None)  # warm: the platform's default
        env.update(mode.env)
        self.containers = DockerContainers() if mode.backend == "docker" else None
        with log.open("wb") as output:
            self.launcher = subprocess.Popen(
                [sys.executable, "-m", "aimos.launcher"],
                cwd=ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: dict[int, psutil.Process] = {}
        self.sessions: set[int] = {self.launcher.pid}

    def wait_until_up(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{self.base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or self.launcher.poll() is not None:
                raise RuntimeError("the platform did not start")
            time.sleep(0.2)
        time.sleep(2)  # let the worker pools come up

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.launcher.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for process in found:
            if process.pid not in self.seen:
                self.seen[process.pid] = process
                try:
                    self.sessions.add(os.getsid(process.pid))
                except OSError:
                    pass
        return found

    def processes(self) -> list[psutil.Process]:
        """Every process of the platform now: its tree, the embedded Redis, its containers'."""
        found = self.tree()
        found += embedded_redis_process()
        if self.containers is not None:
            found += self.containers.processes(owners={p.pid for p in found})
        return found

    def stop(self) -> None:
        """SIGTERM to the launcher (it stops its children), then SIGKILL of whatever of the
        tree is left: every session seen, every process seen, the containers it owned."""
        self.tree()
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)
            try:
                self.launcher.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        for sid in self.sessions - {os.getsid(0)}:
            _kill_session(sid)
        for process in self.seen.values():
            try:
                process.kill()  # psutil checks the pid still names that process
            except psutil.Error:
                pass
        try:
            self.launcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"the launcher {self.launcher.pid} outlived SIGKILL", file=sys.stderr)
        if self.containers is not None:
            self.containers.remove(owners=set(self.seen))


def embedded_redis_process() -> list[psutil.Process]:
    if os.environ.get("REDIS_URL"):
        return []
    try:
        pid = int((embedded_redis.socket_path().parent / "redis.pid").read_text())
        return [psutil.Process(pid)]
    except (OSError, ValueError, psutil.Error):
        return []


CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


class DockerContainers:
    """The platform's containers (`aimos.owner` names one of its processes) and the processes
    in them, found by their cgroup, with the containerd shim of each."""

    def __init__(self) -> None:
        import docker

        self.api = docker.from_env(timeout=30).api
        self.listed: dict[str, int] = {}  # container id → owner pid
        self.listed_at = 0.0

    def owned(self, owners: set[int]) -> set[str]:
        if time.monotonic() - self.listed_at > 1.0:
            containers = self.api.containers(all=True, filters={"label": "aimos.owner"})
            self.listed = {c["Id"]: owner_pid(c["Labels"]["aimos.owner"]) for c in containers}
            self.listed_at = time.monotonic()
        return {cid for cid, owner in self.listed.items() if owner in owners}

    def processes(self, owners: set[int]) -> list[psutil.Process]:
        ids = self.owned(owners)
        if not ids:
            return []
        found = {}
        for process in psutil.process_iter():
            try:
                cgroups = Path(f"/proc/{process.pid}/cgroup").read_text()
            except OSError:
                continue
            if ids.intersection(CONTAINER_ID.findall(cgroups)):
                found[process.pid] = process
                try:
                    parent = process.parent()
                    if parent is not None and parent.name().startswith("containerd-shim"):
                        found[parent.pid] = parent
                except psutil.Error:
                    pass
        return list(found.values())

    def remove(self, owners: set[int]) -> None:
        self.listed_at = 0.0
        try:
            for cid in self.owned(owners):
                self.api.remove_container(cid, force=True)
        except Exception as exc:  # noqa: BLE001 — said, not raised: the next mode still runs
            print(f"containers of the platform may be left: {exc}", file=sys.stderr)


def owner_pid(label: str) -> int:
    _, _, rest = label.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if pid.isdigit() else -1


class MemorySampler:
    """The platform's summed RSS every SAMPLE_SECONDS while in a `with` block; the peak."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.peak_bytes = self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 — one sample lost (the engine was slow)
                print(f"a memory sample failed: {exc}", file=sys.stderr)
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def sample(self) -> None:
        processes = self.platform.processes()
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, len(processes)


# --- the API -------------------------------------------------------------------------------


class RunFailed(Exception):
    pass


class Api:
    """The platform's API as a careful client uses it: a 503 (a database or Redis briefly
    away) is asked again after its Retry-After, a run is started with an Idempotency-Key so
    that asking again never starts a second one; `retried` counts the 503 answers."""

    RETRIES = 30

    def __init__(self, base: str, key: str, connections: int) -> None:
        self.v1 = f"{base}/api/v1"
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_maxsize=connections))
        self.session.headers["X-API-Key"] = key
        self.retried = 0
        self._lock = threading.Lock()

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        for _ in range(self.RETRIES):
            response = self.session.request(method, f"{self.v1}/{path}", **kwargs)
            if response.status_code != 503:
                return response
            with self._lock:
                self.retried += 1
            time.sleep(min(2.0, float(response.headers.get("Retry-After") or 1)))
        return response

    def start_run(self, agent_id: str, payload, wait: float | None = None) -> requests.Response:
        body = {"input": payload} if wait is None else {"input": payload, "wait": wait}
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        return self.request("POST", f"agents/{agent_id}/execute", json=body, headers=headers)

    def deploy(self, *examples: str, reuse: bool = False) -> dict[str, str]:
        """Each example uploaded as a new agent (declaring `reuse: true` when `reuse`); their
        ids once all are ready."""
        from agents.tests.packages import example_files, pack_files

        agents = {}
        for example in examples:
            name = f"bench-{example}-{uuid.uuid4().hex[:8]}"
            agent = self.request("POST", "agents", json={"name": name}).json()
            files = example_files(example)
            if reuse:
                files["aimos.yaml"] += b"\nreuse: true\n"
            archive = pack_files(files)
            self.request(
                "POST",
                f"agents/{agent['id']}/versions",
                files={"file": (f"{example}.tar.gz", archive)},
            ).raise_for_status()
            agents[example] = agent["id"]
        deadline = time.monotonic() + 600
        for example, agent_id in agents.items():
            while (status := self.agent_status(agent_id)) not in ("ready", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{example} is still {status} after 10 minutes")
                time.sleep(0.2)
            if status == "failed":
                raise RuntimeError(f"the build of {example} failed")
        return agents

    def agent_status(self, agent_id: str) -> str:
        return self.request("GET", f"agents/{agent_id}").json()["status"]

    def executor(self, agent_id: str):
        """A task for the measures: one run with `wait` → completed, in seconds."""

        def execute(index: int) -> float:
            started = time.perf_counter()
            body = self.start_run(agent_id, {"n": index}, wait=60).json()
            if body.get("status") != "completed":
                raise RunFailed(f"{body.get('status')}/{body.get('error_type')}: {body}")
            return time.perf_counter() - started

        return execute

    def count(self, path: str, **params) -> int:
        response = self.request("GET", path, params={**params, "limit": 1})
        response.raise_for_status()
        return int(response.headers["X-Total-Count"])


def job_task():
    """A task for the measures: a no-op django-rq job, `enqueue` → its result, in seconds."""
    import django_rq

    from aimos.jobs import ping

    queue = django_rq.get_queue("default")

    def job(index: int) -> float:
        started = time.perf_counter()
        queued = queue.enqueue(ping)  # a job that does nothing
        result = queued.latest_result(timeout=60)
        assert result is not None and result.type == result.Type.SUCCESSFUL
        return time.perf_counter() - started

    return job


def foreign_workers(platform: Platform) -> int:
    """RQ workers on this Redis database that are not the platform's: they take its jobs."""
    import django_rq
    from rq import Worker

    own = {process.pid for process in platform.tree()}
    host = socket.gethostname()
    try:
        workers = Worker.all(connection=django_rq.get_connection("default"))
    except Exception:  # noqa: BLE001 — Redis is away: nothing to say
        return 0
    return sum(1 for worker in workers if worker.hostname != host or worker.pid not in own)


def api_key() -> str:
    """A new API key of the `bench` user (Django is set up here once the first platform has
    migrated the database)."""
    import django

    django.setup()
    from accounts.models import User
    from accounts.services import create_api_key

    user, _ = User.objects.get_or_create(username="bench", defaults={"email": "bench@localhost"})
    return create_api_key(user, name=f"bench {time.time():.0f}")[1]


# --- one mode ------------------------------------------------------------------------------


def sleepers(api: Api, platform: Platform, agent_id: str, count: int) -> Sleepers:
    """`count` runs of slow posted at once without wait; the time until none is active."""
    result = Sleepers()

    def start(index: int) -> None:
        response = api.start_run(agent_id, SLEEPER_INPUT)
        if response.status_code != 202:
            raise RunFailed(f"a sleeper got {response.status_code}: {response.text[:200]}")

    deadline_s = max(120.0, 3.0 * count)
    with MemorySampler(platform) as memory:
        started = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(start, range(count)))
        result.posted_s = time.perf_counter() - started
        while time.perf_counter() - started < deadline_s:
            if api.count("executions/active", agent_id=agent_id) == 0:
                result.done_s = time.perf_counter() - started
                break
            time.sleep(SAMPLE_SECONDS)
    result.peak_bytes, result.peak_processes = memory.peak_bytes, memory.peak_processes
    result.completed = api.count("executions", agent_id=agent_id, status="completed")
    return result


def measure_mode(result: ModeResult, platform: Platform, api: Api, args, first: bool):
    """Fills `result` with the mode's figures; on the first platform also measures the
    baselines and the first table, and returns them."""
    agents = api.deploy("echo", "slow", reuse=result.mode.kind == "reuse")
    execute = api.executor(agents["echo"])
    job = job_task()
    for warm_up in range(3):
        execute(warm_up)
        if first:
            job(warm_up)
    result.latency, back_to_back = one_at_a_time(execute, args.runs)
    result.rates = rates(execute, args.runs, back_to_back)
    baselines = legacy = None
    if first:
        baselines = Baselines(platform.mode)
        baselines.job_latency, job_back_to_back = one_at_a_time(job, args.runs)
        baselines.job_rates = rates(job, args.runs, job_back_to_back)
        baselines.spawn_latency, _ = one_at_a_time(spawn_python, args.runs)
        legacy = Legacy(
            run_latency=result.latency,
            job_latency=baselines.job_latency,
            run_rate=throughput(execute, args.runs, args.concurrency),
            job_rate=throughput(job, args.runs, args.concurrency),
        )
    try:
        result.sleepers = sleepers(api, platform, agents["slow"], args.sleepers)
    except Exception as exc:  # noqa: BLE001 — the figures above still count
        result.sleepers = Sleepers(error=describe(exc))
    return baselines, legacy


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def run_modes(modes: list[Mode], args, logs: Path):
    results: list[ModeResult] = []
    baselines = legacy = None
    key = None
    for mode in modes:
        result = ModeResult(mode, log=logs / f"{mode.name.replace(' ', '-')}.log")
        platform = api = None
        try:
            platform = Platform(mode, free_port(), args.workers, result.log)
            platform.wait_until_up()
            key = key or api_key()
            api = Api(platform.base, key, connections=max(*CLIENTS, args.sleepers))
            found, first_table = measure_mode(result, platform, api, args, baselines is None)
            baselines, legacy = baselines or found, legacy or first_table
        except Exception as exc:  # noqa: BLE001 — the next mode still runs
            result.error = describe(exc)
        finally:
            try:
                if api is not None:
                    result.retried = api.retried
                    result.foreign_workers = foreign_workers(platform)
            finally:
                if platform is not None:
                    platform.stop()
        results.append(result)
    return results, baselines, legacy


# --- output --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


def gb(value: float) -> str:
    return f"{value / GB:.2f} GB"


def print_legacy(args, legacy: Legacy) -> None:
    run_latency, job_latency = legacy.run_latency, legacy.job_latency
    run_rate, job_rate = legacy.run_rate, legacy.job_rate
    print(f"{args.runs} runs, {args.workers} workers, {args.concurrency} concurrent clients")
    print(f"{'':28}{'execute echo':>14}{'no-op rq job':>16}{'ratio':>9}")
    for label, share in (("latency p50", 0.5), ("latency p95", 0.95)):
        ours, baseline = percentile(run_latency, share), percentile(job_latency, share)
        print(f"{label:28}{ms(ours):>14}{ms(baseline):>16}{ours / baseline:>8.1f}x")
    print(f"{'throughput':28}{run_rate:>10.1f} /s{job_rate:>12.1f} /s{job_rate / run_rate:>8.1f}x")
    print(f"(mean execute {statistics.mean(run_latency) * 1000:.1f} ms)")


def rate_header(width: int) -> str:
    return "".join(f"{f'{n} client' + ('s' if n > 1 else ''):>{width}}" for n in CLIENTS)


def print_baselines(args, baselines: Baselines) -> None:
    print(f"\nbaselines, {args.runs} times each (rq job on the {baselines.mode.name} platform)")
    print(f"{'':18}{'p50':>11}{'p95':>12}{rate_header(17)}")
    rows = (("no-op rq job", baselines.job_latency), ("python -S -c pass", baselines.spawn_latency))
    for label, seconds in rows:
        line = f"{label:18}{ms(percentile(seconds, 0.5))}{ms(percentile(seconds, 0.95)):>12}"
        if label == "no-op rq job":
            line += "".join(f"{baselines.job_rates[n]:>15.1f}/s" for n in CLIENTS)
        print(line)


def print_modes(args, results: list[ModeResult], baselines: Baselines | None) -> None:
    print(f"\nexecute echo with wait → completed, {args.runs} runs per figure; x rq, x python: "
          "p50 / the baseline's p50;\nruns/s at 1 client: the latency runs back to back; "
          "(Nx): the rq job's runs/s / ours")  # fmt: skip
    print(f"{'mode':16}{'p50':>11}{'p95':>12}{'x rq':>8}{'x python':>10}{rate_header(19)}")
    job_p50 = percentile(baselines.job_latency, 0.5) if baselines else None
    spawn_p50 = percentile(baselines.spawn_latency, 0.5) if baselines else None
    for backend in dict.fromkeys(r.mode.backend for r in results):
        for result in (r for r in results if r.mode.backend == backend):
            if result.error:
                print(f"{result.mode.name:16}error: {result.error} (log: {result.log})")
                continue
            p50, p95 = percentile(result.latency, 0.5), percentile(result.latency, 0.95)
            line = f"{result.mode.name:16}{ms(p50)}{ms(p95):>12}"
            if baselines:
                line += f"{p50 / job_p50:>7.1f}x{p50 / spawn_p50:>9.1f}x"
                for n in CLIENTS:
                    ratio = baselines.job_rates[n] / result.rates[n]
                    line += f"{result.rates[n]:>9.1f}/s{f'({ratio:.1f}x)':>8}"
            print(line)
        if backend == "docker":
            print(f"{backend + ' reuse':16}n/a (Docker versions are never reused)")


def print_sleepers(args, results: list[ModeResult]) -> None:
    print(
        f"\n{args.sleepers} runs of slow {SLEEPER_INPUT} posted at once without wait; "
        f"memory: the platform's summed RSS every {SAMPLE_SECONDS} s"
    )
    print(f"{'mode':16}{'posted in':>11}{'all ended in':>14}{'completed':>11}"
          f"{'peak memory':>13}{'processes':>11}")  # fmt: skip
    for result in results:
        s = result.sleepers
        if s is None:
            continue
        if s.error:
            print(f"{result.mode.name:16}error: {s.error} (log: {result.log})")
            continue
        done = f"{s.done_s:.1f} s" if s.done_s is not None else "not yet"
        completed = f"{s.completed}/{args.sleepers}"
        print(f"{result.mode.name:16}{s.posted_s:>9.1f} s{done:>14}{completed:>11}"
              f"{gb(s.peak_bytes):>13}{s.peak_processes:>11}")  # fmt: skip


def p50_ms(result: ModeResult | None) -> float | None:
    return percentile(result.latency, 0.5) * 1000 if result else None


def print_targets(args, results: list[ModeResult]) -> None:
    by_name = {r.mode.name: r for r in results if not r.error}
    warm, reuse = by_name.get("process warm"), by_name.get("process reuse")
    sleep = warm.sleepers if warm and warm.sleepers and not warm.sleepers.error else None
    done = None if sleep is None else sleep.done_s if sleep.done_s is not None else float("inf")
    rows = [
        ("trivial run p50, process warm", "<= 25 ms", p50_ms(warm), 25, "ms"),
        ("trivial run p50, process reuse", "<= 10 ms", p50_ms(reuse), 10, "ms"),
        ("trivial run p50, docker warm", "<= 50 ms", p50_ms(by_name.get("docker warm")), 50, "ms"),
        ("runs/s at 8 clients, process warm", ">= 50", warm and warm.rates[8], 50, "/s"),
        ("runs/s at 8 clients, process reuse", ">= 150", reuse and reuse.rates[8], 150, "/s"),
        (f"{args.sleepers} sleeping runs ended within", "<= 10 s", done, 10, "s"),
        ("peak memory meanwhile", "<= 4 GB", sleep and sleep.peak_bytes / GB, 4, "GB"),
    ]
    print(f"\n{'target (process warm unless said)':40}{'goal':>10}{'measured':>12}")
    for label, goal, value, bound, unit in rows:
        if value is None:
            print(f"{label:40}{goal:>10}{'n/a':>12}")
            continue
        met = value >= bound if goal.startswith(">=") else value <= bound
        shown = f"{value:.1f} {unit}" if value != float("inf") else "not yet"
        print(f"{label:40}{goal:>10}{shown:>12}  {'met' if met else 'missed'}")
    for backend in ("process", "docker"):
        warm_run, cold_run = by_name.get(f"{backend} warm"), by_name.get(f"{backend} cold")
        if warm_run and cold_run and looks_cold(warm_run, cold_run):
            print(f"{backend} warm p50 is cold p50 within {NOISE:.0%}: cold fallback, "
                  "warm sandboxes not active")  # fmt: skip


def looks_cold(warm: ModeResult, cold: ModeResult) -> bool:
    warm_p50, cold_p50 = percentile(warm.latency, 0.5), percentile(cold.latency, 0.5)
    return abs(warm_p50 - cold_p50) <= NOISE * cold_p50


# --- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sleepers", type=int, default=100)
    parser.add_argument(
        "--modes",
        type=lambda text: [Mode.parse(part) for part in text.split(",")],
        default=ALL_MODES,
        help="the modes to run, in order; the docker ones only when `docker info` answers",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the platform is stopped
    modes = args.modes
    skipped = []
    if any(m.backend == "docker" for m in modes) and not docker_answers():
        skipped = [m for m in modes if m.backend == "docker"]
        modes = [m for m in modes if m.backend != "docker"]

    logs = Path(tempfile.mkdtemp(prefix="aimos-bench-"))
    load_before = os.getloadavg()[0]
    results, baselines, legacy = run_modes(modes, args, logs)
    if legacy is not None:
        print_legacy(args, legacy)
        print_baselines(args, baselines)
    print_modes(args, results, baselines)
    for mode in skipped:
        print(f"{mode.name:16}skipped: `docker info` does not answer")
    print_sleepers(args, results)
    print_targets(args, results)
    for result in results:
        if result.retried:
            print(f"{result.mode.name}: {result.retried} answer(s) 503 (the database or Redis "
                  "briefly away), asked again after their Retry-After")  # fmt: skip
        if result.foreign_workers:
            print(f"warning: {result.foreign_workers} RQ workers of another platform were on "
                  f"this Redis database after {result.mode.name}; they take its jobs")  # fmt: skip
    print(f"{os.cpu_count()} cores; load average (1 min) {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    if not any(r.error or (r.sleepers and r.sleepers.error) for r in results):
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
