"""Cold start of a sandbox run, beside baselines measured in the same run.

    python bench/sandbox_start.py [--runs 10] [--backend process --backend docker]

For each backend (process always; docker when its engine answers) a trivial agent
(`ctx.delta("hi"); return "ok"`) is built once, then started `--runs` times; each start is a
new sandbox. Reported: time from `start()` to the first event and to the outcome, median and
best, next to the baseline of the same machine and moment:

- process: `python -S -c pass` with the same interpreter (a bare process start);
- docker:  `docker run --rm <the agent's image> true` (a bare container start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aimos.settings")
os.environ.setdefault("DEBUG", "1")

from core.sandbox_settings import sandbox_config  # noqa: E402
from sandbox.backends import get_backend  # noqa: E402
from sandbox.base import Limits, SandboxUnavailable  # noqa: E402

AGENT = """\
def handle(payload, ctx):
    ctx.delta("hi")
    return "ok"
"""


def timed(command: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of `command`, `runs` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def sandbox_starts(backend, env, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from start() to the first event and to the outcome, `runs` times."""
    first, done = [], []
    for _ in range(runs):
        started = time.perf_counter()
        run = backend.start(env, "agent.main:handle", None, limits=Limits(timeout_seconds=60))
        events = run.events()
        next(events)
        first.append(time.perf_counter() - started)
        outcome = run.wait()
        done.append(time.perf_counter() - started)
        assert outcome.output == "ok", outcome
        list(events)
    return first, done


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms (best {min(values) * 1000:6.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backend", action="append", choices=["process", "docker"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aimos-bench-"))
    work.chmod(0o755)
    source = work / "source"
    (source / "agent").mkdir(parents=True)
    (source / "agent/__init__.py").write_text("")
    (source / "agent/main.py").write_text(AGENT)
    config = replace(sandbox_config(), root=work / "root")
    print(f"{args.runs} runs each; median (best)\n")
    try:
        for name in args.backend or ["process", "docker"]:
            backend = get_backend(name, config=config)
            try:
                backend.check()
            except SandboxUnavailable as exc:
                print(f"{name}: skipped ({exc})\n")
                continue
            env = backend.prepare(source, {"entrypoint": "agent.main:handle"}, key="bench")
            try:
                if name == "process":
                    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
                    label, command = "python -S -c pass", [python, "-S", "-c", "pass"]
                else:
                    docker = shutil.which("docker") or "docker"
                    label = f"docker run --rm {env.location} true"
                    command = [docker, "run", "--rm", "--network", "none", env.location, "true"]
                baseline = timed(command, args.runs)
                first, done = sandbox_starts(backend, env, args.runs)
            finally:
                backend.remove(env)
            base = statistics.median(baseline)
            print(f"{name}")
            print(f"  baseline  {label}")
            print(f"            {ms(baseline)}")
            print(f"  first event {ms(first)}   {statistics.median(first) / base:5.1f}x baseline")
            print(f"  completed   {ms(done)}   {statistics.median(done) / base:5.1f}x baseline")
            print()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
