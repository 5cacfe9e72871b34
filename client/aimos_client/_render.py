"""How the `aimos` command shows a run's events in a terminal.

Text the agent streams (`content_delta`) and the run's output go to stdout, as they come;
everything else (logs, tool calls, checkpoints, the run's state) to stderr, so that
`aimos run … > answer.txt` keeps the answer only.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from aimos_client.models import Event

# Terminal control sequences an agent could send to take over the screen; newlines and tabs stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LOG_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}


def clean(text: str) -> str:
    return _CONTROL.sub("", text)


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class EventPrinter:
    """Prints events one by one; `finish()` ends the line the deltas left open."""

    def __init__(self, err: Console, out: TextIO | None = None, *, logs: bool = True) -> None:
        self.err = err
        self.out = out or sys.stdout
        self.logs = logs
        self.streamed: list[str] = []
        self.line_open = False
        self.terminal: Event | None = None

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def finish(self) -> None:
        if self.line_open:
            self._write("\n")
            self.line_open = False

    def _note(self, text: str, style: str = "") -> None:
        self.finish()
        self.err.print(Text(clean(text), style=style), soft_wrap=True)

    def __call__(self, event: Event) -> None:
        kind, data = event.type, event.data
        if kind == "content_delta":
            text = clean(str(data.get("content", "")))
            self.streamed.append(text)
            if text:
                self._write(text)
                self.line_open = not text.endswith("\n")
            return
        if kind == "log":
            if not self.logs:
                return
            level = str(data.get("level") or "info").lower()
            source = str(data.get("source") or "agent")
            prefix = f"[{level}]" if source == "agent" else f"[{level} {source}]"
            self._note(f"{prefix} {data.get('message', '')}", LOG_STYLES.get(level, ""))
        elif kind == "tool_call":
            self._note(f"→ {data.get('name')}({as_json(data.get('args'))})", "cyan")
        elif kind == "tool_result":
            self._note(f"← {data.get('name')}: {as_json(data.get('result'))}", "cyan")
        elif kind == "checkpoint":
            label = data.get("label") or data.get("checkpoint_id")
            self._note(f"● checkpoint {label} ({data.get('checkpoint_id')})", "magenta")
        elif kind == "run_started":
            self._note(f"▶ run {data.get('run_id') or event.execution_id} started", "dim")
        elif kind == "run_paused":
            self._note("⏸ paused", "yellow")
        elif kind == "run_resumed":
            self._note("▶ resumed", "dim")
        elif kind == "run_completed":
            self.terminal = event
            output = data.get("output")
            self.finish()
            if not (isinstance(output, str) and output == "".join(self.streamed)):
                if isinstance(output, str):
                    self._write(clean(output) + "\n")
                elif output is not None:
                    self._write(json.dumps(output, indent=2, ensure_ascii=False) + "\n")
            metrics = data.get("metrics") or {}
            took = metrics.get("duration_ms")
            self._note("✓ completed" + (f" in {took} ms" if took is not None else ""), "green")
        elif kind == "run_failed":
            self.terminal = event
            error_type = data.get("error_type") or "error"
            self._note(f"✗ failed ({error_type}): {data.get('error')}", "bold red")
        elif kind in ("run_cancelled", "run_timed_out"):
            self.terminal = event
            word = "cancelled" if kind == "run_cancelled" else "timed out"
            self._note(f"✗ {word}: {data.get('reason')}", "bold red")
        elif kind == "error":
            self._note(f"! {data.get('message')}", "yellow")
        else:
            self._note(f"• {kind} {as_json(data)}", "blue")
