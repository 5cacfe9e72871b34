"""Where a task's workspace is, from the app of sessions.

A task is a run of a session (`workspaces`, a layer above executions: executions never
import it). The sessions app plugs its answer in when the project starts
(`workspaces.services.task_mount`, connected from `aimos.apps`), so the rule for when a task
may start in its session's workspace has one source.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured

from sandbox.base import SessionMount

# session id -> (the session's workspace and control directory on this machine, "") while a
# task may start there, else (None, why not).
TaskMount = Callable[[object], tuple[SessionMount | None, str]]

_mount: TaskMount | None = None


def connect(mount: TaskMount) -> None:
    global _mount
    _mount = mount


def task_mount(session_id) -> tuple[SessionMount | None, str]:
    if _mount is None:
        raise ImproperlyConfigured(
            "No app told executions where tasks' workspaces are (see executions.task_workspaces)"
        )
    return _mount(session_id)
