"""How the `aimos` command shows a run's events and the API's objects.

Text the agent streams (`content_delta`) and the run's output go to stdout, as they come and
byte for byte; everything else (logs, tool calls, checkpoints, the run's state) to stderr, so
that `aimos run … > answer.txt` keeps the answer only. Nothing that comes from an agent or a
user is read as Rich markup or emoji codes: it is written as `Text`, or as raw text.
"""

from __future__ import annotations

import errno
import io
import json
import re
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.text import Text

from aimos_client.models import Event

# Terminal control sequences an agent could send to take over the screen; newlines and tabs stay.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LOG_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}
# A table written to a pipe or a file is laid out as if the screen had no right edge.
UNBOUNDED_WIDTH = 1_000_000


def clean(text: str) -> str:
    return _CONTROL.sub("", text)


def is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def for_stream(text: str, stream: Any) -> str:
    """`text` as it goes to `stream`: intact for a pipe or a file; without control sequences
    for a terminal (an agent must not be able to take over the screen)."""
    return clean(text) if is_tty(stream) else text


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # Rich would exit 1 here; the command ends quietly, as for its own writes.
        raise BrokenPipeError(errno.EPIPE, "the reader of the output went away")


def console(*, stderr: bool = False, file: TextIO | None = None, **options: Any) -> Console:
    """A console that never reads markup or emoji codes in what it prints, and never wraps
    plain prints (`soft_wrap`): only tables are fitted to a terminal's width. A closed
    stream raises BrokenPipeError."""
    return _Console(
        stderr=stderr,
        file=file,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=True,
        **options,
    )


def print_table(out: Console, renderable: RenderableType) -> None:
    """A table or grid on stdout: fitted to the terminal (the columns that may fold do); in a
    pipe or file, never wrapped: each row on one line however long, no trailing blanks."""
    if is_tty(out.file):
        out.print(renderable, soft_wrap=False)
        return
    buffer = io.StringIO()
    wide = console(file=buffer, width=UNBOUNDED_WIDTH, color_system=None)
    wide.print(renderable, soft_wrap=False)
    text = "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())
    out.file.write(text)
    out.file.flush()


def as_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def local_time(value: str | None, *, date: bool = True) -> str:
    """An API time (ISO 8601, UTC) in this machine's time zone, with the zone's name:
    `2025-03-01 14:03:22 CET` (`date=False`: `14:03:22 CET`)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone()
    zone = local.tzname() or local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S") + f" {zone}"


def output_text(output: Any) -> str:
    """A run's output as `--wait` prints it: a string as it is, anything else as JSON."""
    if isinstance(output, str):
        return output
    return json.dumps(output, indent=2, ensure_ascii=False, default=str)


class EventPrinter:
    """Prints events one by one. Deltas go to `out` exactly as streamed; notes (logs, tool
    calls, …) to `err`. `finish()` ends the line the deltas left open on `out`.

    When both are the same terminal, a note that comes while a delta line is open starts on
    a line of its own: the newline that takes it there is written to `err`, never to `out`.
    """

    def __init__(self, err: Console, out: TextIO | None = None, *, logs: bool = True) -> None:
        self.err = err
        self.out = out or sys.stdout
        self.logs = logs
        self.streamed: list[str] = []
        self.line_open = False  # `out` holds a line without its newline yet
        self.screen_open = False  # on a shared terminal, the cursor is in a delta line
        self.terminal: Event | None = None
        self.shared_screen = is_tty(self.out) and is_tty(err.file)

    def _write(self, text: str) -> None:
        self.out.write(for_stream(text, self.out))
        self.out.flush()

    def finish(self) -> None:
        if self.line_open:
            self._write("\n")
            self.line_open = False
        self.screen_open = False

    def _note(self, text: str, style: str = "") -> None:
        if self.screen_open:
            self.err.file.write("\n")
            self.err.file.flush()
            self.screen_open = False
        self.err.print(Text(clean(text), style=style), soft_wrap=True)

    def __call__(self, event: Event) -> None:
        kind, data = event.type, event.data
        if kind == "content_delta":
            text = str(data.get("content", ""))
            self.streamed.append(text)
            if text:
                self._write(text)
                self.line_open = not text.endswith("\n")
                self.screen_open = self.shared_screen and self.line_open
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
                if output is not None:
                    text = output_text(output)
                    self._write(text if text.endswith("\n") else text + "\n")
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
