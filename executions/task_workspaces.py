"""Where a task's workspace is, from the app of sessions.

A task is a run of a session (`workspaces`, a layer above executions: executions never
import it). The sessions app plugs its answer in when the project starts
(`workspaces.services.task_mount` and `check_task`, connected from `aimos.apps`), so the
rules for when a task may be asked of a session, and start in its workspace, have one source
each.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from sandbox.base import SessionMount

# session id -> (the session's workspace and control directory on this machine, "") while a
# task may start there, else (None, why not).
TaskMount = Callable[[object], tuple[SessionMount | None, str]]
# session id -> None when a task may be asked of the session now, else Conflict (as a
# ServiceError) saying why.
TaskCheck = Callable[[object], None]

_mount: TaskMount | None = None
_check: TaskCheck | None = None


def connect(mount: TaskMount, check: TaskCheck) -> None:
    global _mount, _check
    _mount, _check = mount, check


def task_mount(session_id) -> tuple[SessionMount | None, str]:
    """Where a task of the session starts (for its worker)."""
    return _connected(_mount)(session_id)


def check_task(session_id) -> None:
    """Whether a task may be asked of the session now (for a service that starts one)."""
    _connected(_check)(session_id)


def _connected(call):
    if call is None:
        raise ImproperlyConfigured(
            "No app told executions where tasks' workspaces are (see executions.task_workspaces)"
        )
    return call
