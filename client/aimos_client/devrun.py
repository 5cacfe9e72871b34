"""`aimos dev run`: an agent's handler run on this machine, without a server.

The handler runs under the platform's own runner (`_runner.py` in this package is
`sandbox/runner.py` of AIMOS, shipped as is), so it gets the same `ctx` (delta, tool_call,
tool_result, log, checkpoint, emit, state), the same handling of sync, async and generator
handlers, and `print()` turned into `log` events. What differs from a run on the platform:

- no sandbox: no isolation, no limits but the manifest's timeout, the network as this
  machine has it;
- nothing is installed: the handler runs with the Python given (this one by default) and
  the packages it already has; install the agent's requirements there yourself;
- checkpoints are kept in memory (`LocalRun.checkpoints`), with ids `local-1`, `local-2`, ….

The events are the platform's (`run_started`, `content_delta`, `tool_call`, `tool_result`,
`log`, `checkpoint`, custom ones, then `run_completed` / `run_failed` / `run_timed_out` /
`run_cancelled`), numbered from 1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimos_client.manifest import load_manifest
from aimos_client.models import Event

RUNNER = Path(__file__).resolve().parent / "_runner.py"
# Started as `python -c BOOT runner folder`: unlike `python runner.py`, the runner's own
# folder (this package) is not put first on sys.path, where its modules would shadow the
# agent's and the standard library's.
BOOT = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
PROTOCOL_TYPES_NOT_EVENTS = frozenset({"result", "error", "inspection", "ready"})
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")


@dataclass
class LocalRun:
    """How a local run ended."""

    status: str  # completed, failed, timed_out or cancelled
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    events: list[Event] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    duration_ms: int = 0
    hint: str | None = None  # what to do about the failure, when there is something to say

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "error_type": self.error_type,
            "duration_ms": self.duration_ms,
            "checkpoints": self.checkpoints,
            "events": [event.as_dict() for event in self.events],
            "hint": self.hint,
        }


class _Recorder:
    def __init__(self, on_event: Callable[[Event], None] | None) -> None:
        self.events: list[Event] = []
        self.on_event = on_event

    def emit(self, type_: str, data: dict[str, Any]) -> Event:
        event = Event(seq=len(self.events) + 1, type=type_, data=data, execution_id="local")
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return event


def run_local(
    folder: str | Path,
    payload: Any = None,
    *,
    state: Any = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
    timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> LocalRun:
    """Run the handler of the agent in `folder` on `payload` and return how it ended;
    `on_event` hears each event as it happens. `timeout` defaults to the manifest's.
    Every process the handler started is gone when this returns."""
    root = Path(folder).resolve()
    manifest = load_manifest(root)
    limit = float(timeout if timeout is not None else manifest["timeout"])
    request = {
        "mode": "run",
        "entrypoint": manifest["entrypoint"],
        "payload": payload,
        "state": state,
        "env": {**manifest["env"], **(env or {})},
    }
    recorder = _Recorder(on_event)
    recorder.emit("run_started", {"run_id": "local", "agent_id": None, "version": "local"})
    started = time.monotonic()
    process = subprocess.Popen(
        [python or sys.executable, "-c", BOOT, str(RUNNER), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=root,
        start_new_session=True,  # its own process group: everything it starts is killed with it
    )
    ended: dict[str, str] = {}

    def stop(reason: str) -> None:
        if not ended:
            ended["reason"] = reason
        _kill_group(process)

    timer = threading.Timer(limit, stop, args=("timed_out",))
    timer.daemon = True
    timer.start()
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(process.stderr.read()))
    reader.daemon = True
    reader.start()
    terminal: dict[str, Any] | None = None
    checkpoints: list[dict[str, Any]] = []
    try:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write((json.dumps(request) + "\n").encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the runner is gone already: told below, from its exit and stderr
        for raw in process.stdout:
            line = raw.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
                kind, data = message["type"], message.get("data") or {}
            except (ValueError, KeyError, TypeError):
                recorder.emit("error", {"message": "refused a non-protocol line"})
                continue
            if kind in ("result", "error"):
                terminal = {"type": kind, "data": data}
                if kind == "error" and data.get("traceback"):
                    recorder.emit(
                        "log",
                        {"level": "error", "message": str(data["traceback"]), "source": "agent"},
                    )
                continue
            if kind in PROTOCOL_TYPES_NOT_EVENTS:
                continue
            if kind == "checkpoint":
                checkpoint_id = f"local-{len(checkpoints) + 1}"
                checkpoints.append(
                    {"id": checkpoint_id, "label": data.get("label"), "state": data.get("state")}
                )
                data = {"checkpoint_id": checkpoint_id, "label": data.get("label")}
            recorder.emit(kind, data)
        process.wait()
    except KeyboardInterrupt:
        stop("cancelled")
        process.wait()
        raise
    finally:
        timer.cancel()
        _kill_group(process)  # what the handler left running in the background
        reader.join(5)
    duration_ms = int((time.monotonic() - started) * 1000)
    run = LocalRun(status="failed", checkpoints=checkpoints, duration_ms=duration_ms)
    if ended.get("reason") == "timed_out" and terminal is None:
        run.status, run.error = "timed_out", f"timed out after {limit:g} s"
        recorder.emit("run_timed_out", {"reason": run.error})
    elif terminal is not None and terminal["type"] == "result":
        run.status, run.output = "completed", terminal["data"].get("output")
        metrics = {
            "duration_ms": duration_ms,
            "cpu_ms": None,
            "peak_memory_mb": None,
            "events": len(recorder.events) + 1,
        }
        recorder.emit("run_completed", {"output": run.output, "metrics": metrics})
    else:
        if terminal is not None:
            run.error = str(terminal["data"].get("message") or "the agent failed")
            run.error_type = str(terminal["data"].get("error_type") or "exception")
        else:
            detail = b"".join(stderr_chunks).decode("utf-8", "replace").strip()
            run.error = f"the runner ended without a result (exit code {process.returncode})"
            if detail:
                run.error += f": {detail[-2000:]}"
            run.error_type = "sandbox_error"
        recorder.emit("run_failed", {"error": run.error, "error_type": run.error_type})
        run.hint = _missing_module_hint(run.error, root, manifest, python or sys.executable)
    run.events = recorder.events
    return run


def _missing_module_hint(
    error: str | None, root: Path, manifest: dict[str, Any], python: str
) -> str | None:
    """What to do when the handler imports a package the Python running it does not have
    (nothing is installed by `dev run`); None for any other failure, or a module of the
    agent's own folder."""
    match = MISSING_MODULE.search(error or "")
    if match is None:
        return None
    module = match.group(1)
    top = module.split(".")[0]
    if (root / top).exists() or (root / f"{top}.py").exists():
        return None  # the agent's own module: not a matter of installing
    requirements = manifest.get("requirements")
    if requirements:
        what = "the agent's requirements"
        install = f"{shlex.quote(python)} -m pip install -r {shlex.quote(str(root / requirements))}"
    else:
        what = f"the package that provides {top!r} (and list it in requirements.txt)"
        install = f"{shlex.quote(python)} -m pip install <package>"
    return (
        f"{python} has no module {module!r}: `aimos dev run` installs nothing. Install "
        f"{what} there ({install}), or run it with the Python that has them: --python PATH "
        "(e.g. your project's .venv/bin/python)."
    )


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
