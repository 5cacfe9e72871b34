"""Where runs are supervised: a `RunHost` holds the runs of one worker process.

A run's job claims the run and hands it to the host of the process (`adopt`), which
supervises it in a thread of its own; the worker goes on to the next job while the host has
room (`AIMOS_RUNS_PER_WORKER`). One control thread serves every run of the host: it waits
for control messages on all their Redis lists at once, renews all their leases in one
statement, has their buffered deltas flushed and enforces the longest pause. It never waits
for a sandbox or rides out a database outage: kills go on in threads of their own, and a
run's flushes, pauses and resumes on that run's errand thread (`Supervisor`). Database work of
the runs goes through `AIMOS_RUN_DB_CONNECTIONS` connections, however many runs there are.

A run worker's host keeps warm sandboxes (`sandbox.warm.WarmPool`, `AIMOS_WARM_SANDBOXES` per
version): a run takes one when one is ready, and the pool makes its replacement in the
background. The control thread drops the pool of a version that is no longer its agent's
current one, or whose agent was archived (the pool's own thread discards its sandboxes); a pool
never outlives its host.

`stop(grace)` returns within `grace` + `STOPPING_SECONDS` + 2 × `JOIN_SECONDS`, even when a
sandbox hangs: the runs still held after `grace` are all killed at once.

A job run outside such a worker (the test suite's burst worker) gets a host of its own for
that one run (`supervise_here`), doing its database work on its own thread: the same code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, ClassVar, TypeVar

import django_rq
from django.conf import settings
from django.db import connections
from django.db.models import F

from agents.choices import AgentStatus
from agents.models import AgentVersion
from core.transient import TRANSIENT_ERRORS, reconnect
from executions.control import RunControl
from executions.models import Execution
from sandbox.warm import WarmPool

if TYPE_CHECKING:
    from executions.supervisor import Supervisor

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long the control thread waits for a control message before its other rounds.
CONTROL_WAIT_SECONDS = 0.1
# How long a stopping host gives the runs it ended to record their end.
STOPPING_SECONDS = 5.0
# How long a stopping host waits for its control thread, then for its pool to close.
JOIN_SECONDS = 5.0
# How often the control thread looks for warm sandboxes of retired versions.
RETIRED_CHECK_SECONDS = 5.0


class RunHost:
    """The runs of one process. `start()` makes it the process's host; `stop()` waits for its
    runs to end (up to a grace period) and stops its threads."""

    _current: ClassVar[RunHost | None] = None

    def __init__(
        self, capacity: int, *, db_connections: int = 0, pool: WarmPool | None = None
    ) -> None:
        self.capacity = capacity
        self.pool = pool
        self.runs: dict[str, Supervisor] = {}
        self.room = threading.Condition()
        self.stopping = threading.Event()
        self.database = (
            ThreadPoolExecutor(db_connections, thread_name_prefix="run-db")
            if db_connections
            else None
        )
        self.control = threading.Thread(target=self._control_loop, name="run-control", daemon=True)

    @classmethod
    def current(cls) -> RunHost | None:
        return cls._current

    def start(self, *, current: bool = False) -> RunHost:
        """Start the control thread; with `current`, the process's runs come here."""
        self.control.start()
        if current:
            RunHost._current = self
        return self

    def stop(self, grace: float = 0.0) -> None:
        """Take no more runs; wait up to `grace` seconds for those held to end, then end the
        others `failed`/`lost` (their sandboxes killed, all at once) and stop. Returns within a
        bounded time (see the module docstring): what still hangs then is left to the lost-run
        sweep."""
        if RunHost._current is self:
            RunHost._current = None
        if not self._wait_for_runs(grace):
            for supervisor in self._held():
                supervisor.stop_for_shutdown()  # returns at once: the kills go on together
            if not self._wait_for_runs(STOPPING_SECONDS):
                logger.warning("stopping with %d runs not ended", len(self._held()))
        self.stopping.set()
        if self.control.is_alive():
            self.control.join(JOIN_SECONDS)
        if self.pool is not None and not self.pool.close(timeout=JOIN_SECONDS):
            logger.warning("stopping while warm sandboxes are still being discarded")
        if self.database is not None:
            self.database.shutdown(wait=False)  # a write still riding out an outage goes on

    def _wait_for_runs(self, seconds: float) -> bool:
        """Wait up to `seconds` for the runs held to end; whether none is left."""
        with self.room:
            return self.room.wait_for(lambda: not self.runs, seconds)

    # --- admission ---------------------------------------------------------------------------

    def wait_for_room(self, timeout: float) -> bool:
        with self.room:
            return self.room.wait_for(lambda: len(self.runs) < self.capacity, timeout)

    def adopt(self, supervisor: Supervisor) -> str | None:
        """In the run's job: claim the run, then supervise it in a thread of its own. Returns
        "supervising", or None when the run is not this job's to take."""
        if not supervisor.claim(self):
            return None
        self._hold(supervisor)
        threading.Thread(
            target=self._supervise,
            args=(supervisor,),
            name=f"run-{supervisor.execution_id}",
            daemon=True,
        ).start()
        return "supervising"

    def supervise_here(self, supervisor: Supervisor) -> str | None:
        """Claim and supervise the run in the calling thread; its final status."""
        if not supervisor.claim(self):
            return None
        self._hold(supervisor)
        try:
            return supervisor.supervise()
        finally:
            self._release(supervisor)

    def _supervise(self, supervisor: Supervisor) -> None:
        try:
            supervisor.supervise()
        except Exception:  # logged and recorded by the supervisor
            pass
        finally:
            self._release(supervisor)
            connections.close_all()

    def _hold(self, supervisor: Supervisor) -> None:
        with self.room:
            self.runs[str(supervisor.execution_id)] = supervisor

    def _release(self, supervisor: Supervisor) -> None:
        with self.room:
            self.runs.pop(str(supervisor.execution_id), None)
            self.room.notify_all()

    # --- the database ------------------------------------------------------------------------

    def db(self, call: Callable[[], T]) -> T:
        """`call()` on one of the host's database connections (on this thread's own when the
        host has none)."""
        if self.database is None:
            return call()
        return self.database.submit(call).result()

    # --- the control thread ------------------------------------------------------------------

    def _held(self) -> list[Supervisor]:
        with self.room:
            return list(self.runs.values())

    def _control_loop(self) -> None:
        controls = django_rq.get_connection("runs")
        self.next_renewal = time.monotonic() + self._renew_every()
        self.next_retired_check = time.monotonic() + RETIRED_CHECK_SECONDS
        try:
            while not self.stopping.is_set():
                try:
                    self._control_pass(controls)
                except Exception:  # one bad pass must not end the control of every run
                    logger.exception("the control pass of the run host failed")
                    self.stopping.wait(0.2)
        finally:
            controls.close()
            connections.close_all()

    @staticmethod
    def _renew_every() -> float:
        return max(1.0, settings.AIMOS_RUN_LEASE_SECONDS / 3)

    def _control_pass(self, controls) -> None:
        """Deliver a control, have due deltas flushed, renew the leases when due, enforce the
        longest pause, drop retired versions' sandboxes when due. Waits for no sandbox."""
        held = self._held()
        started = [s for s in held if s.run is not None]
        if not started:
            self.stopping.wait(CONTROL_WAIT_SECONDS)
        else:
            self._deliver_controls(controls, started)
        for supervisor in started:
            supervisor.flush_if_due()
        now = time.monotonic()
        if held and now >= self.next_renewal:
            renewed = self._renew(held, settings.AIMOS_RUN_LEASE_SECONDS)
            self.next_renewal = now + (self._renew_every() if renewed else 0.2)
        for supervisor in started:
            supervisor.check_pause_limit()
        if self.pool is not None and now >= self.next_retired_check:
            self.next_retired_check = now + RETIRED_CHECK_SECONDS
            self._drop_retired_pools()

    def _deliver_controls(self, controls, started: list[Supervisor]) -> None:
        """Wait for the next control message of any started run and apply it."""
        by_id = {s.execution_id: s for s in started}
        try:
            message = RunControl.receive_any(controls, list(by_id), CONTROL_WAIT_SECONDS)
        except TRANSIENT_ERRORS:  # Redis restarting: the controls wait in their lists
            self.stopping.wait(0.2)
            return
        if message is not None:
            execution_id, control = message
            supervisor = by_id.get(execution_id)
            if supervisor is not None:
                supervisor.apply(control)

    def _drop_retired_pools(self) -> None:
        """Drop the warm sandboxes of versions no longer run by default: not their agent's
        current version any more (a newer one is ready), or of an archived agent. The pool's
        own thread discards them."""
        kept = self.pool.env_keys()
        if not kept:
            return
        try:
            versions = AgentVersion.objects.filter(pk__in=kept, agent__current_version_id=F("pk"))
            versions = versions.exclude(agent__status=AgentStatus.ARCHIVED)
            current = {str(pk) for pk in versions.values_list("pk", flat=True)}
        except TRANSIENT_ERRORS:
            reconnect()
            return
        for env_key in kept - current:
            self.pool.drop(env_key)

    def _renew(self, held: list[Supervisor], lease: int) -> bool:
        """Renew the leases of every run held, in one statement; a run whose lease is lost
        is killed, and so is one whose lease could not be renewed for a whole lease (the
        sweep may declare it lost any moment). False when the database could not be reached."""
        attempts = {s.execution_id: s.attempt for s in held if s.attempt is not None}
        try:
            renewed = Execution.renew_leases(attempts, lease_seconds=lease)
        except TRANSIENT_ERRORS:
            reconnect()
            now = time.monotonic()
            for supervisor in held:
                if now - supervisor.renewed_at >= lease:
                    supervisor.lose_lease("its lease could not be renewed")
            return False
        now = time.monotonic()
        for supervisor in held:
            if supervisor.execution_id in renewed:
                supervisor.renewed_at = now
            elif supervisor.execution_id in attempts:
                supervisor.lose_lease("its lease is lost")
        return True
