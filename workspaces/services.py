"""Use cases of sessions: access, create (within the caps), start, pause, resume, stop and
delete, and their tasks — called by the API, the admin and the session host alike. A
session's sandbox is started, paused, resumed and stopped by a session host
(`workspaces.host`), told through `workspaces.commands`; these functions record the wish,
tell the host once it is committed and wait (bounded) for the host to have done it.

What is done inside a running session (files, search, shell, processes) is in
`workspaces.operations`.

A session's tasks are cancelled by its host as it ends the session (`workspaces.host`: every
end passes there — a stop or delete asked here, an idle stop, a sandbox that died, a lost
lease), not here: a stop asked here of a session no host holds yet has no task to cancel (a
task is only ever started in an active session).
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from agents import services as agents
from agents.models import Agent
from core.errors import Conflict, NotFound, ServiceError
from core.sandbox_settings import sandbox_config
from executions import control
from executions import services as runs
from executions.choices import ExecutionStatus
from executions.models import Execution
from executions.services import runnable_version
from sandbox import limits_for
from sandbox.base import SessionMount
from workspaces import commands, operations
from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.operations import use
from workspaces.waits import announce, wait_until

# The smallest workspace (an ext4 filesystem needs a few megabytes for itself).
MIN_WORKSPACE_MB = 16
# The longest idle timeout a session may ask for.
MAX_IDLE_TIMEOUT_SECONDS = 7 * 24 * 3600
# How long a request waits for a session host to have started, stopped or deleted a session
# (below the 30 s many HTTP clients give a request).
WAIT_SECONDS = 20.0


# --- Access ------------------------------------------------------------------------------------


def access_session(user, session_id) -> Session:
    """The session `user` may see, else NotFound (another user's session does not exist for
    them, nor does one being deleted)."""
    try:
        return (
            Session.objects.for_user(user)
            .visible()
            .select_related("agent", "version")
            .get(pk=session_id)
        )
    except (Session.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Session not found") from None


# --- Create and start --------------------------------------------------------------------------


def create_session(
    user,
    *,
    agent: Agent | None = None,
    workspace_mb: int | None = None,
    idle_timeout_seconds: int | None = None,
    network: bool | None = None,
) -> Session:
    """Record a starting session and tell the session hosts (after commit). With `agent`, the
    sandbox has its current version's environment (/env and /code, as its runs have) and the
    limits its manifest asks for; the network only when asked (or the manifest asks) and the
    server allows it (`AIMOS_SANDBOX_ALLOW_NETWORK`), as for runs. Conflict when the user has
    `AIMOS_SESSION_MAX_ACTIVE_PER_USER` live sessions already."""
    version = runnable_version(agent) if agent is not None else None
    manifest = version.manifest if version is not None else {}
    config = sandbox_config()
    try:
        limits = limits_for(manifest, config=config)
    except ValueError as exc:
        raise Conflict(f"The agent's manifest cannot be used for a session: {exc}") from None
    wanted_network = bool(manifest.get("network")) if network is None else network
    size = _workspace_size(workspace_mb)
    idle = _idle_timeout(idle_timeout_seconds)
    with transaction.atomic():
        _check_cap(user)
        session = Session.objects.create(
            owner=user,
            agent=agent,
            version=version,
            backend=(version.sandbox_backend if version else "") or settings.AIMOS_SANDBOX,
            workspace_mb=size,
            idle_timeout_seconds=idle,
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            pids=limits.pids,
            network=wanted_network and config.allow_network,
        )
        commands.send(commands.START, session.pk)
    return session


def start_session(session: Session) -> Session:
    """`stopped | failed → starting` again, within the caps; the workspace is kept. Conflict
    when the session is not stopped or failed."""
    with transaction.atomic():
        _check_cap(session.owner)
        if not Session.request_start(session.pk):
            session.refresh_from_db()
            raise Conflict(f"The session is {session.status}; only a stopped one can be started")
        commands.send(commands.START, session.pk)
        announce(session.pk)
    session.refresh_from_db()
    return session


def wait_until_started(session: Session, seconds: float = WAIT_SECONDS) -> Session:
    """The session once its host has started it (active) or given up (failed), or as it is
    after `seconds`."""
    waited = wait_until(session, lambda s: s.status != SessionStatus.STARTING, _bounded(seconds))
    if waited is None:
        raise NotFound("Session not found")
    return waited


# --- Pause and resume --------------------------------------------------------------------------


def pause_session(session: Session, *, wait: float = WAIT_SECONDS) -> Session:
    """Freeze every process of the session's sandbox, its running tasks paused first (the
    workspace stays as it is; nothing can be done in it until a resume). Returns once its host
    has paused it. Conflict unless it is active; SessionNotChanged when its host did not pause
    it within `wait` seconds."""
    if session.status != SessionStatus.ACTIVE:
        raise Conflict(f"The session is {session.status}; only an active one can be paused")
    return _ask_host(session, commands.PAUSE, wait)


def resume_session(session: Session, *, wait: float = WAIT_SECONDS) -> Session:
    """Thaw the session's sandbox and resume its paused tasks. Conflict unless it is paused;
    SessionNotChanged when its host did not resume it within `wait` seconds."""
    if session.status != SessionStatus.PAUSED:
        raise Conflict(f"The session is {session.status}; only a paused one can be resumed")
    return _ask_host(session, commands.RESUME, wait)


class SessionNotChanged(ServiceError):
    status_code = 503
    code = "session_host_unavailable"


def _ask_host(session: Session, op: str, wait: float) -> Session:
    """Tell the host holding the session to `op` it; the session once its status changed."""
    was = session.status
    commands.send(op, session.pk, host=session.host)
    waited = wait_until(session, lambda s: s.status != was, _bounded(wait))
    if waited is None:
        raise NotFound("Session not found")
    if waited.status == was:
        raise SessionNotChanged(
            f"The session's host did not {op} it within {wait:g} s; get the session to see "
            "its status"
        )
    return waited


# --- Stop and delete ---------------------------------------------------------------------------


def stop_session(session: Session, *, wait: float = WAIT_SECONDS) -> Session:
    """Stop the session's sandbox (its tasks are cancelled, every process in it ends; the
    workspace is kept). Returns once its host has stopped it, or after `wait` seconds as it
    is then (still stopping). Conflict when it is not running."""
    for _ in range(2):
        if Session.stop_unclaimed(session.pk):  # no host will start it now
            announce(session.pk)
            session.refresh_from_db()
            return session
        session.refresh_from_db()
        if not session.is_live:
            raise Conflict(f"The session is {session.status}, not running")
        if session.host:
            commands.send(commands.STOP, session.pk, host=session.host)
            break
    waited = wait_until(session, lambda s: not s.is_live, _bounded(wait))
    if waited is None:
        raise NotFound("Session not found")
    return waited


def delete_session(session: Session, *, wait: float = WAIT_SECONDS) -> bool:
    """Delete the session: gone for its owner at once; its host kills every process in it,
    removes its workspace and then its row (its tasks cancelled first; their records stay,
    without their session). True when all that was done within `wait`
    seconds (else it goes on without the caller)."""
    with transaction.atomic():
        if not Session.mark_deleting(session.pk):
            raise NotFound("Session not found")
        Session.stop_unclaimed(session.pk)
        session.refresh_from_db()
        commands.send(commands.DELETE, session.pk, host=session.host if session.is_live else "")
        announce(session.pk)
    return wait_until(session, lambda s: False, _bounded(wait)) is None


# --- Tasks ------------------------------------------------------------------------------------


def task_agent(session: Session, ref: str | None) -> Agent:
    """The agent a task runs: `ref` (an id, or the name of one of the session owner's agents),
    else the session's own. A 400 when neither names one."""
    if ref:
        # The session owner's agents only: a task runs in their workspace.
        return agents.find_agent(session.owner, ref)
    if session.agent is None:
        raise ServiceError.invalid(
            "agent", "The session has no agent of its own: name the agent to run."
        )
    return session.agent


def start_task(
    session: Session,
    *,
    agent: Agent,
    input: Any = None,
    timeout_seconds: int | None = None,
    version: int | str | None = None,
) -> Execution:
    """A pending task of the session (its owner's run of `agent`), queued as any run.
    Conflict when the session is not active, or the agent has no ready version."""
    use(session)
    return runs.start_execution(
        session.owner,
        agent,
        input=input,
        timeout_seconds=timeout_seconds,
        version=version,
        session_id=session.pk,
    )


def cancel_tasks(session_id) -> int:
    """Cancel every task of the session still pending, running or paused (for a session that
    stops or is deleted: its tasks lose their workspace). Returns at once; a running task ends
    when its worker has killed it. How many were asked to end."""
    asked = 0
    for execution in Execution.objects.filter(session_id=session_id).active():
        try:
            control.cancel_execution(execution, wait=0)
            asked += 1
        except Conflict:  # it ended meanwhile
            pass
    return asked


def pause_tasks(session_id, *, wait: float) -> None:
    """Pause every running task of the session (for a session being paused); returns once
    they are paused, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    running = Execution.objects.filter(session_id=session_id, status=ExecutionStatus.RUNNING)
    for execution in running:
        try:
            control.pause_execution(execution, wait=max(0.0, deadline - time.monotonic()))
        except Conflict:  # it ended meanwhile
            pass


def resume_tasks(session_id) -> None:
    """Resume every paused task of the session (for a session resumed). Returns at once."""
    paused = Execution.objects.filter(session_id=session_id, status=ExecutionStatus.PAUSED)
    for execution in paused:
        try:
            control.resume_execution(execution, wait=0)
        except Conflict:  # it ended meanwhile
            pass


def check_task(session_id) -> None:
    """A task may be asked of the session now: it is active (else Conflict, 409
    `session_not_active`), and its use is recorded."""
    session = Session.objects.filter(pk=session_id).first()
    if session is None:
        raise Conflict("The session was deleted", code="session_not_active")
    operations.use(session)


def task_mount(session_id) -> tuple[SessionMount | None, str]:
    """For a task of the session: (its workspace and control directory on this machine, "")
    while the session is active and its workspace is mounted here, else (None, why not). A
    workspace that is not mounted is refused: the run would write to this host's own disk,
    past the workspace's cap, under a folder the session never sees."""
    session = Session.objects.filter(pk=session_id).only("pk", "status").first()
    if session is None:
        return None, "The run's session was deleted"
    if session.status != SessionStatus.ACTIVE:
        return None, (
            f"The session is {session.status}: a task runs only while its session is active "
            "(start the session, then run the task again)"
        )
    if not os.path.ismount(session.workspace_dir):
        return None, "The session's workspace is not mounted on this machine"
    return SessionMount(workspace=session.workspace_dir, control_dir=session.control_dir), ""


# --- Rules -------------------------------------------------------------------------------------


def _check_cap(user) -> None:
    """Conflict when `user` has as many live sessions as allowed. The user's row is locked
    until the caller's transaction ends, so two requests cannot both take the last place."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    allowed = settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER
    live = Session.objects.filter(owner=user).visible().live().count()
    if live >= allowed:
        raise Conflict(
            f"You have {live} running sessions, the most allowed ({allowed}); "
            "stop or delete one first",
            code="session_limit",
        )


def _workspace_size(requested: int | None) -> int:
    if requested is None:
        return settings.AIMOS_SESSION_WORKSPACE_MB
    most = settings.AIMOS_SESSION_MAX_WORKSPACE_MB
    if not MIN_WORKSPACE_MB <= requested <= most:
        raise ServiceError.invalid(
            "workspace_mb", f"Must be between {MIN_WORKSPACE_MB} and {most} (MB)."
        )
    return requested


def _idle_timeout(requested: int | None) -> int:
    if requested is None:
        return settings.AIMOS_SESSION_IDLE_SECONDS
    if not 1 <= requested <= MAX_IDLE_TIMEOUT_SECONDS:
        raise ServiceError.invalid(
            "idle_timeout_seconds", f"Must be between 1 and {MAX_IDLE_TIMEOUT_SECONDS}."
        )
    return requested


def _bounded(seconds: float) -> float:
    return max(0.0, min(float(seconds), settings.AIMOS_MAX_WAIT_SECONDS))
