"""What a session's sockets receive (`workspaces.consumers`): messages `{type, data,
timestamp}`, sent to the session's channel-layer group.

`publish(session_id, type, data)` is the one way code sends a message to a session's sockets
(after the current transaction commits; best effort, like all live delivery: the database is
the record). Types:

- `file_changed` `{path, change: created | modified | deleted}`: a file of the workspace
  changed (a task's `ctx.workspace.write` is told here from its run's `file_changed` event);
- `session_status` `{session_id, status, error}`: the session changed (the consumer reads the
  row on each `workspaces.waits.announce` and sends it when it differs);
- the task events of the Crogia reference, from the events of the session's task runs
  (`executions.events` sends those to the same group as they are; `task_message` maps them):
  `task_started`, `text_delta`, `tool_call`, `tool_complete`, `task_completed` and `error`,
  each with `execution_id` in its data.

`process_output` / `process_exited` go to one socket only, the one that asked to follow a
process (`workspaces.consumers`).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from core.live import send_soon
from executions.events import session_group

# A run's terminal events, and the status each one means.
TERMINAL = {
    "run_completed": "completed",
    "run_failed": "failed",
    "run_cancelled": "cancelled",
    "run_timed_out": "timed_out",
}


def message(kind: str, data: dict, timestamp: str | None = None) -> dict:
    """A session socket's message."""
    return {"type": kind, "data": data, "timestamp": timestamp or timezone.now().isoformat()}


def publish(session_id, kind: str, data: dict) -> None:
    """Send `{type: kind, data, timestamp}` to every socket of the session once the current
    transaction commits (at once outside one; never if it rolls back)."""
    sent = message(kind, data)
    transaction.on_commit(
        lambda: send_soon(session_group(session_id), {"type": "session.message", "message": sent})
    )


def task_messages(event: dict) -> list[dict]:
    """The reference's task events for one event of a task run (`ExecutionEvent.as_message`),
    none for the events it has no word for (logs, checkpoints, pauses…). A run that ends
    otherwise than completed gives `error`, then `task_completed` with its status, so a
    client has one message that says the task is over."""
    kind, data = event["type"], event.get("data") or {}
    execution_id = event["execution_id"]
    at = event.get("timestamp")

    def of(new_kind: str, fields: dict) -> dict:
        return message(new_kind, {"execution_id": execution_id, **fields}, at)

    if kind == "run_started":
        return [of("task_started", _fields(data, "agent_id", "version"))]
    if kind == "content_delta":
        return [of("text_delta", {"content": data.get("content", "")})]
    if kind == "tool_call":
        return [of("tool_call", _fields(data, "call_id", "name", "args"))]
    if kind == "tool_result":
        return [of("tool_complete", _fields(data, "call_id", "name", "result"))]
    if kind == "file_changed":
        return [of("file_changed", _fields(data, "path", "change"))]
    if kind == "error":  # a problem the run goes on after (its output was cut, …)
        return [of("error", {"message": data.get("message", ""), "fatal": False})]
    if kind == "run_completed":
        return [of("task_completed", {"status": "completed", **_fields(data, "output", "metrics")})]
    if kind in TERMINAL:
        status = TERMINAL[kind]
        reason = data.get("error") or data.get("reason") or status
        failure = {"status": status, "message": reason, "error_type": data.get("error_type")}
        return [
            of("error", {**failure, "fatal": True}),
            of("task_completed", {"status": status, "output": None, "error": reason}),
        ]
    return []


def _fields(data: dict, *names: str) -> dict:
    return {name: data.get(name) for name in names}
