"""The session host (`manage.py sessionhost`): where session sandboxes are started, watched
and stopped.

It waits for commands (`workspaces.commands`: its own list first, then the shared one) and
holds each session it starts in a `Keeper`, a thread that does that session's work in order:
claim it (`Session.claim`, so one host starts it), mount its workspace
(`sandbox.workspace_disk.WorkspaceDisk`), start its sandbox (`Backend.start_session`) and wait
for the daemon inside to answer, then `active`; later stop it (asked to, idle for its
`idle_timeout_seconds`, or the host stopping: the workspace is kept, unmounted) or delete it
(the workspace removed, then the row). Its main thread, between commands, renews the leases of
every session it holds in one statement, notices a sandbox that died (the session ends
`failed`, "its sandbox exited"), stops idle sessions and records workspace usage.

A session's tasks (runs in its workspace, `workspaces.tasks`) count as its use: a session with
a task pending, running or paused is never idle, and its idle time counts from its last task's
end as from its last request. A pause pauses its running tasks and then freezes every process
of its sandbox (a paused session is idle from its pause on); a resume thaws them and resumes
its paused tasks. Whatever ends a session here — a stop, a failure, a delete, a
lost lease, the host stopping — first cancels its tasks and waits (up to TASKS_END_SECONDS) for
them to end, then stops its sandbox and unmounts its workspace, and cancels once more those
that came meanwhile (their worker refuses them: the session is no longer active): no task
outlives its workspace. This is the one place for that rule, since every end of a session
passes here (`workspaces.services` only asks for a stop or a delete).

A session whose lease this host lost (the upkeep ended it `failed` meanwhile, or its row was
deleted) is stopped here at once; when its row is gone, its workspace is removed too, since
nothing can reach it any more. A host that dies leaves its sessions to the upkeep
(`workspaces.recovery`): their leases expire and they end `failed` ("its host stopped"); with
the process backend their sandboxes die with it (bubblewrap's `--die-with-parent`), Docker's
are removed by the backend's sweep.

`stop()` (SIGTERM) stops every session held, workspaces kept, and returns within
STOP_SECONDS.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta

import django_rq
from django.conf import settings
from django.db import connections
from django.utils import timezone

from agents.builds import environment_of
from agents.choices import VersionStatus
from core.sandbox_settings import sandbox_config
from core.transient import TRANSIENT_ERRORS, reconnect
from executions.models import Execution
from executions.waits import wait_until as wait_for_run
from sandbox import get_backend, limits_for
from sandbox.base import Limits, SandboxError, SandboxUnavailable, SessionSpec
from sandbox.session_client import SessionClient, SessionOpError, SessionUnreachable
from sandbox.workspace_disk import WorkspaceDisk
from workspaces import commands
from workspaces.choices import SessionStatus
from workspaces.disks import disk_of, remove_workspace
from workspaces.models import Session
from workspaces.services import cancel_tasks, pause_tasks, resume_tasks
from workspaces.waits import announce

logger = logging.getLogger(__name__)

# How long the main thread waits for a command before its other rounds.
COMMAND_WAIT_SECONDS = 0.5
# How often it looks for dead sandboxes, idle sessions and workspace usage.
WATCH_SECONDS = 1.0
USAGE_SECONDS = 10.0
# How long a sandbox's daemon may take to answer after the sandbox started.
READY_SECONDS = 30.0
# How long a stopping host waits for its sessions to be stopped.
STOP_SECONDS = 30.0
# How long the end of a session waits for its cancelled tasks to end (their workers kill
# their sandboxes) before it unmounts their workspace regardless; below the wait of a stop
# request (`workspaces.services.WAIT_SECONDS`).
TASKS_END_SECONDS = 10.0

SANDBOX_EXITED = "its sandbox exited"
# The states in which a session's idle time runs.
IDLING = (SessionStatus.ACTIVE, SessionStatus.PAUSED)
START_FAILED = "The session's sandbox could not start"


def host_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def limits_of(session: Session) -> Limits:
    """The sandbox's limits: the session's own (memory, CPUs, processes, network), the
    server's for the rest (file size, open files, /tmp)."""
    config = sandbox_config()
    return replace(
        limits_for({}, config=config),
        memory_mb=session.memory_mb,
        cpus=session.cpus,
        pids=session.pids,
        network=session.network and config.allow_network,
    )


# --- One session --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # a command (start, stop, delete), or died, lost, shutdown
    gone: bool = False  # lost: the row is gone too


DIED, LOST, SHUTDOWN, IDLE = "died", "lost", "shutdown", "idle"


class Keeper:
    """One session on this host: its operations, in order, on a thread of its own. Holds the
    session (its lease) from a successful claim until it has stopped, failed or was deleted."""

    def __init__(self, host: SessionHost, session_id: str) -> None:
        self.host = host
        self.session_id = session_id
        self.ops: queue.Queue[Op] = queue.Queue()
        self.claimed = False
        self.sandbox = None
        self.disk: WorkspaceDisk | None = None
        self.watched_dead = False
        self.finished = False
        self.thread = threading.Thread(target=self._run, name=f"session-{session_id}", daemon=True)

    def put(self, op: Op) -> None:
        self.ops.put(op)

    def _run(self) -> None:
        try:
            while True:
                op = self.ops.get()
                try:
                    done = self._do(op)
                except Exception:  # noqa: BLE001 — one failed step must not orphan the sandbox
                    logger.exception("session %s: %s failed", self.session_id, op.kind)
                    done = self._give_up()
                if done:
                    # Not held here any more; a command that came meanwhile starts afresh.
                    self.claimed = self.watched_dead = False
                    if self.host.release(self):
                        return
        finally:
            connections.close_all()

    def _do(self, op: Op) -> bool:
        """Do `op`; True when this host holds the session no more."""
        if op.kind == commands.START:
            return self._start()
        if op.kind in (commands.STOP, IDLE, SHUTDOWN):
            return self._stop(op.kind)
        if op.kind == commands.DELETE:
            return self._delete()
        if op.kind == commands.PAUSE:
            return self._pause()
        if op.kind == commands.RESUME:
            return self._resume()
        if op.kind == DIED:
            return self._died()
        if op.kind == LOST:
            return self._lost(op.gone)
        return not self.claimed

    # --- start ---------------------------------------------------------------------------------

    def _start(self) -> bool:
        if self.claimed:
            return False  # a repeated command: already started here
        host = self.host
        if host.stopping.is_set():
            commands.send(commands.START, self.session_id)  # for another host, or the next
            return True
        if not Session.claim(self.session_id, host=host.name, lease_seconds=host.lease_seconds):
            return True  # not (or no longer) waiting for a host, or another host took it
        self.claimed = True
        session = Session.objects.select_related("version").get(pk=self.session_id)
        try:
            self._start_sandbox(session)
        except Exception as exc:  # noqa: BLE001 — recorded on the session
            if not isinstance(exc, SandboxUnavailable):
                logger.exception("session %s: the sandbox could not start", self.session_id)
            self._clean_up()
            self._record(Session.fail, self._reason(exc))
            return True
        if not Session.activate(self.session_id, host=host.name):
            # Stopped, deleted or lost meanwhile: what else was asked comes next, in order.
            logger.info("session %s ended while it started", self.session_id)
            if self.ops.empty():
                self._clean_up()
                return True
            return False
        announce(self.session_id)
        logger.info("session %s is active", self.session_id)
        return False

    def _start_sandbox(self, session: Session) -> None:
        version = session.version
        if version is not None and version.status != VersionStatus.READY:
            raise SandboxError(f"its agent's version {version.label} is {version.status}")
        self.disk = disk_of(session.pk, session.workspace_mb)
        self.disk.ensure()
        session.control_dir.mkdir(parents=True, exist_ok=True)
        backend = get_backend(session.backend or None, config=sandbox_config())
        spec = SessionSpec(
            session_id=str(session.pk),
            workspace=session.workspace_dir,
            control_dir=session.control_dir,
            limits=limits_of(session),
            env=environment_of(version) if version is not None else None,
        )
        self.sandbox = backend.start_session(spec)
        self._wait_until_ready(session)

    def _wait_until_ready(self, session: Session) -> None:
        """The daemon answers a ping, or SandboxError."""
        client = SessionClient(str(session.socket_path), timeout=5.0)
        deadline = time.monotonic() + READY_SECONDS
        delay = 0.02
        while True:
            try:
                client.ping()
                return
            except (SessionUnreachable, SessionOpError) as exc:
                if not self.sandbox.alive():
                    raise SandboxError("the sandbox exited as it started") from exc
                if time.monotonic() + delay > deadline:
                    raise SandboxError(
                        f"its daemon did not answer within {READY_SECONDS:g} s"
                    ) from exc
            if self.host.stopping.wait(delay):
                raise SandboxError("its session host is stopping")
            delay = min(delay * 2, 0.5)

    @staticmethod
    def _reason(exc: Exception) -> str:
        if isinstance(exc, SandboxUnavailable):
            return f"{START_FAILED}: {exc}"
        if isinstance(exc, SandboxError):
            return f"{START_FAILED}: {exc}"
        return START_FAILED

    # --- pause, resume ---------------------------------------------------------------------------

    def _pause(self) -> bool:
        """Its running tasks are paused (a task in the middle of a call to the daemon would
        wait for it), then every process of the sandbox is frozen."""
        if not self.claimed or self.sandbox is None:
            return not self.claimed
        if not Session.objects.filter(pk=self.session_id, status=SessionStatus.ACTIVE).exists():
            return False  # a stale command
        pause_tasks(self.session_id, wait=TASKS_END_SECONDS)
        try:
            self.sandbox.pause()
        except SandboxError:
            logger.exception("session %s: could not pause its sandbox", self.session_id)
            resume_tasks(self.session_id)
            announce(self.session_id)  # the request that asked stops waiting
            return False
        if not Session.mark_paused(self.session_id, host=self.host.name):
            self.sandbox.resume()  # ended meanwhile: what ends it comes next
            return False
        announce(self.session_id)
        logger.info("session %s paused", self.session_id)
        return False

    def _resume(self) -> bool:
        if not self.claimed or self.sandbox is None:
            return not self.claimed
        if not Session.objects.filter(pk=self.session_id, status=SessionStatus.PAUSED).exists():
            return False
        self.sandbox.resume()
        if Session.mark_resumed(self.session_id, host=self.host.name):
            resume_tasks(self.session_id)
        announce(self.session_id)
        logger.info("session %s resumed", self.session_id)
        return False

    # --- stop, delete ----------------------------------------------------------------------------

    def _stop(self, why: str) -> bool:
        if not self.claimed:
            return True
        if why == IDLE and not self._still_idle():
            return False
        self._end_tasks()
        self._record_usage()
        self._clean_up()
        self._record(Session.mark_stopped)
        self._end_tasks(wait=False)
        logger.info("session %s stopped (%s)", self.session_id, why)
        return True

    def _still_idle(self) -> bool:
        """The idle check was made a moment ago: it holds still (no use since)."""
        session = Session.objects.filter(pk=self.session_id).first()
        return session is not None and _idle(session, timezone.now())

    def _delete(self) -> bool:
        session = Session.objects.filter(pk=self.session_id).first()
        if session is None:
            self._clean_up()
            return True
        if not session.deleting:
            return not self.claimed  # a stale command
        if session.is_live and session.host != self.host.name:
            return not self.claimed  # held elsewhere, or not claimed yet: not this host's
        self._end_tasks()
        self._clean_up()
        self._end_tasks(wait=False)
        remove_workspace(session.pk)
        Session.objects.filter(pk=session.pk, deleting=True).delete()
        announce(session.pk)
        logger.info("session %s deleted", self.session_id)
        return True

    def _died(self) -> bool:
        if not self.claimed or self.sandbox is None:
            return not self.claimed
        self._end_tasks()
        self._record_usage()
        self._clean_up()
        self._record(Session.fail, SANDBOX_EXITED)
        self._end_tasks(wait=False)
        logger.warning("session %s failed: %s", self.session_id, SANDBOX_EXITED)
        return True

    def _lost(self, gone: bool) -> bool:
        """The lease is lost (the session ended meanwhile) or the row is gone."""
        if not self.claimed:
            return True
        self._end_tasks()
        self._clean_up()
        if gone:
            remove_workspace(self.session_id)
        logger.warning(
            "session %s: %s; its sandbox was stopped",
            self.session_id,
            "its record is gone" if gone else "its lease is lost",
        )
        return True

    def _give_up(self) -> bool:
        """After an unexpected error: nothing of the session is left running here."""
        if not self.claimed:
            return True
        try:
            self._end_tasks()
            self._clean_up()
            self._record(Session.fail, "its session host failed to manage it")
            self._end_tasks(wait=False)
        except Exception:  # noqa: BLE001 — the lease will expire: the upkeep ends it
            logger.exception("session %s: could not clean up", self.session_id)
        return True

    # --- helpers ---------------------------------------------------------------------------------

    def _end_tasks(self, *, wait: bool = True) -> None:
        """Cancel the session's tasks still pending, running or paused; with `wait`, return
        once they have ended (their workers killed their sandboxes), or after
        TASKS_END_SECONDS."""
        if not cancel_tasks(self.session_id) or not wait:
            return
        deadline = time.monotonic() + TASKS_END_SECONDS
        for task in Execution.objects.filter(session_id=self.session_id).active():
            left = deadline - time.monotonic()
            if left <= 0 or not wait_for_run(task, lambda t: t.is_terminal, left).is_terminal:
                logger.warning(
                    "session %s: its tasks did not all end within %g s",
                    self.session_id,
                    TASKS_END_SECONDS,
                )
                return

    def _clean_up(self) -> None:
        """Every process of the session is gone, its workspace unmounted."""
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None:
            sandbox.stop()
        disk = self.disk or disk_of(self.session_id)
        self.disk = None
        if disk.mounted():
            disk.unmount()

    def _record(self, move, *args) -> None:
        if move(self.session_id, *args, host=self.host.name):
            announce(self.session_id)

    def _record_usage(self) -> None:
        disk = self.disk
        if disk is None or not disk.mounted():
            return
        try:
            Session.record_usage(self.session_id, disk.usage_bytes())
        except Exception:  # noqa: BLE001 — only a figure
            logger.warning("session %s: could not measure its workspace", self.session_id)


def _idle(session: Session, now) -> bool:
    """Unused for its idle timeout: no request since, and, when active, no task running or
    ended since (a task is use of the session as long as it lasts). A paused session's idle
    time counts from its pause (its tasks are paused with it)."""
    timeout = timedelta(seconds=session.idle_timeout_seconds)
    if session.status not in IDLING or now - session.last_active_at < timeout:
        return False
    if session.status == SessionStatus.PAUSED:
        return True
    tasks = Execution.objects.filter(session_id=session.pk)
    return not (tasks.active().exists() or tasks.filter(finished_at__gt=now - timeout).exists())


# --- The host ---------------------------------------------------------------------------------


class SessionHost:
    """The sessions of one process. `run(stop)` serves commands until `stop` is set, then
    stops every session it holds."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or host_name()
        self.keepers: dict[str, Keeper] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.lease_seconds = settings.AIMOS_RUN_LEASE_SECONDS

    def run(self, stop: threading.Event) -> None:
        redis = django_rq.get_connection("default")
        renew_every = max(1.0, self.lease_seconds / 3)
        next_renewal = next_watch = next_usage = time.monotonic()
        logger.info("session host %s is serving", self.name)
        try:
            while not stop.is_set():
                try:
                    command = commands.receive(redis, self.name, COMMAND_WAIT_SECONDS)
                    if command is not None:
                        self.dispatch(command.op, command.session_id)
                    now = time.monotonic()
                    if now >= next_renewal:
                        renewed = self.renew()
                        next_renewal = now + (renew_every if renewed else 0.2)
                    if now >= next_watch:
                        next_watch = now + WATCH_SECONDS
                        self.watch(usage=now >= next_usage)
                        if now >= next_usage:
                            next_usage = now + USAGE_SECONDS
                except TRANSIENT_ERRORS:  # the database or Redis restarting: try again
                    logger.warning("session host: a service is unavailable", exc_info=True)
                    reconnect()
                    stop.wait(0.2)
                except Exception:  # noqa: BLE001 — one bad round must not end every session
                    logger.exception("session host: a round failed")
                    stop.wait(0.2)
        finally:
            self.stop()
            redis.close()
            connections.close_all()

    # --- keepers -----------------------------------------------------------------------------

    def dispatch(self, op: str, session_id: str) -> None:
        """Hand a command to the session's keeper (made for a start, or a delete of a session
        no keeper holds)."""
        with self.lock:
            keeper = self.keepers.get(session_id)
            if keeper is None:
                if op == commands.STOP or self.stopping.is_set():
                    return  # not held here: nothing to stop
                keeper = self.keepers[session_id] = Keeper(self, session_id)
                keeper.thread.start()
            keeper.put(Op(op))

    def release(self, keeper: Keeper) -> bool:
        """The keeper is done, unless something was asked of it meanwhile (then it goes on)."""
        with self.lock:
            if not keeper.ops.empty():
                return False
            keeper.finished = True
            if self.keepers.get(keeper.session_id) is keeper:
                del self.keepers[keeper.session_id]
            return True

    def _held(self) -> list[Keeper]:
        with self.lock:
            return [k for k in self.keepers.values() if k.claimed and not k.finished]

    def _tell(self, keeper: Keeper, op: Op) -> None:
        with self.lock:
            if not keeper.finished:
                keeper.put(op)

    # --- rounds ------------------------------------------------------------------------------

    def renew(self) -> bool:
        """Renew the lease of every session held, in one statement; a session whose lease is
        lost (or whose row is gone) is stopped. False when the database could not be
        reached."""
        held = {k.session_id: k for k in self._held()}
        if not held:
            return True
        try:
            renewed = Session.renew_leases(held, host=self.name, lease_seconds=self.lease_seconds)
            lost = set(held) - renewed
            existing = (
                {str(pk) for pk in Session.objects.filter(pk__in=lost).values_list("pk", flat=True)}
                if lost
                else set()
            )
        except TRANSIENT_ERRORS:
            reconnect()
            return False
        for session_id in lost:
            keeper = held[session_id]
            if keeper.sandbox is None and not keeper.ops.empty():
                continue  # starting or stopping: its own steps settle it
            self._tell(keeper, Op(LOST, gone=session_id not in existing))
        return True

    def watch(self, *, usage: bool = False) -> None:
        """Dead sandboxes end their session `failed`; idle sessions are stopped; with
        `usage`, workspace usage is recorded."""
        held = [k for k in self._held() if k.sandbox is not None]
        for keeper in held:
            sandbox = keeper.sandbox
            if sandbox is not None and not keeper.watched_dead and not sandbox.alive():
                keeper.watched_dead = True
                self._tell(keeper, Op(DIED))
        if not held:
            return
        now = timezone.now()
        by_id = {k.session_id: k for k in held}
        for session in Session.objects.filter(pk__in=list(by_id), status__in=IDLING):
            if _idle(session, now):
                self._tell(by_id[str(session.pk)], Op(IDLE))
        if usage:
            for keeper in held:
                keeper._record_usage()

    def stop(self) -> None:
        """Stop every session held (workspaces kept); returns within STOP_SECONDS."""
        self.stopping.set()
        with self.lock:
            keepers = list(self.keepers.values())
            for keeper in keepers:
                keeper.put(Op(SHUTDOWN))
        deadline = time.monotonic() + STOP_SECONDS
        for keeper in keepers:
            keeper.thread.join(max(0.1, deadline - time.monotonic()))
        left = [k.session_id for k in keepers if k.thread.is_alive()]
        if left:
            logger.warning("session host stopping with sessions not stopped: %s", left)
