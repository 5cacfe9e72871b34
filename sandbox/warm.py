"""Warm sandboxes kept ready for the next runs of the versions in use.

`WarmPool.take` starts a run as `Backend.start` does, from a sandbox started ahead of it
(`Backend.warm`: its agent already imported) when one is ready, else cold; it never waits for
a warm-up. Either way it asks for a replacement, made by the pool's one background thread.

Sandboxes are kept per key — backend, version (`env.key`), entrypoint and limits but the
timeout — at most `per_key` of a key and `total` in all; a key gets warm sandboxes only while
the total has room. They are made for the longest timeout taken of their key (a take may
shorten a sandbox's timeout, not lengthen it: see `WarmSandbox`). A key not taken for
`idle_seconds` gives its sandboxes back. `drop(env_key)` forgets a version's at once (a new
version, an archived agent): none is taken once it returns, and the background thread discards
them, so `drop` never waits for a sandbox (the run host's control thread calls it). `close()`
discards everything and returns when nothing is left (or after its `timeout`). A warm sandbox
is used once: every run gets a fresh one.

With a `ReusePolicy` (a version whose manifest says `reuse: true`), the key also holds the
run's owner, and one sandbox serves that owner's runs one after another
(`Backend.warm_reusable`, `sandbox.protocol.ReusableStream`): a take with none free starts one
at once and takes it (nothing is warmed ahead for an owner); when its run ends as a run that
may be followed (completed, or failed with the agent's own exception) it comes back to its
shelf, ready, before that run's `wait()` returns. It serves `max_runs` runs at most and is
discarded after `idle_seconds` without one; `drop` and `close` discard the free ones as
above and those in use when their run ends. Reusable sandboxes count toward `total`, free or
serving a run: when the total is reached, a take with none free starts its run cold (and
keeps nothing of it); it never waits.

Nothing of a pool outlives its process: bubblewrap sandboxes die with it (--die-with-parent);
Docker containers are removed by `close()`, or by the sweep of the next upkeep pass when the
process was killed (they carry its labels).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sandbox.base import Backend, Environment, Limits, Run, WarmSandbox

logger = logging.getLogger("aimos.sandbox")

Key = tuple[str, str, str, Limits, str | None]
# How long the keeper sleeps at most: a warm sandbox that died on its own (its agent exited at
# import time, the OOM killer) is noticed and replaced within this.
CHECK_EVERY_S = 5.0


@dataclass(frozen=True)
class ReusePolicy:
    """How long one sandbox may serve one owner's runs of a version."""

    max_runs: int
    idle_seconds: float


@dataclass(eq=False)
class _Shelf:
    """The warm sandboxes of one key, and how to make another (from its latest take)."""

    key: Key
    backend: Backend
    env: Environment
    entrypoint: str
    limits: Limits
    used_at: float
    reuse: ReusePolicy | None = None
    sandboxes: list[WarmSandbox] = field(default_factory=list)
    # Being made: by the keeper, or by a take of a reusing key (for its own run).
    warming: int = 0
    # Reusable sandboxes serving a run, to come back to the shelf when it ends.
    lent: list[WarmSandbox] = field(default_factory=list)
    # False after a warm-up failed or gave a sandbox that died or never became ready: no more
    # warm-ups until the next take, so a broken version costs one per take at most.
    wanted: bool = True


class WarmPool:
    """Warm sandboxes per key, made in the background; thread-safe."""

    def __init__(self, *, per_key: int = 2, total: int = 8, idle_seconds: float = 300.0):
        self.per_key = per_key
        self.total = total
        self.idle_seconds = idle_seconds
        self._shelves: dict[Key, _Shelf] = {}
        self._discarding: list[WarmSandbox] = []  # forgotten by `drop`: for the keeper to kill
        self._changed = threading.Condition()
        self._closed = False
        self._keeper: threading.Thread | None = None

    def take(
        self,
        backend: Backend,
        env: Environment,
        entrypoint: str,
        payload: Any,
        *,
        limits: Limits,
        state: Any = None,
        env_vars: dict[str, str] | None = None,
        run_id: str | None = None,
        reuse: ReusePolicy | None = None,
        owner: str | None = None,
    ) -> Run:
        """`backend.start(env, entrypoint, payload, …)`, from a warm sandbox of the same key
        when one is ready. Warm, the run's `env_vars` are not visible at import time. With
        `reuse`, from a sandbox that served this `owner` before when one is free, else from a
        new one while the total has room, else cold (see the module docstring); `owner` is
        then required."""
        if reuse is not None and owner is None:
            raise ValueError("a reused sandbox serves one owner: owner is required")
        key = (
            backend.name,
            env.key,
            entrypoint,
            replace(limits, timeout_seconds=0.0),
            owner if reuse is not None else None,
        )
        sandbox = shelf = None
        make_reusable: Limits | None = None  # the limits of a reusable sandbox to make here
        with self._changed:
            if not self._closed:
                shelf = self._shelves.get(key)
                if shelf is None:
                    shelf = self._shelves[key] = _Shelf(key, backend, env, entrypoint, limits, 0)
                longest = max(shelf.limits.timeout_seconds, limits.timeout_seconds)
                shelf.backend, shelf.env, shelf.reuse = backend, env, reuse
                shelf.limits = replace(limits, timeout_seconds=longest)
                shelf.used_at = time.monotonic()
                shelf.wanted = reuse is None
                sandbox = next((s for s in shelf.sandboxes if self._fits(s, limits)), None)
                if sandbox is not None:
                    shelf.sandboxes.remove(sandbox)
                if reuse is not None and sandbox is not None:
                    shelf.lent.append(sandbox)
                elif reuse is not None and self._kept() < self.total:
                    shelf.warming += 1  # its place in the total, while it is made
                    make_reusable = shelf.limits
                self._wake()
        if make_reusable is not None:
            try:
                sandbox = backend.warm_reusable(
                    env, entrypoint, limits=make_reusable, max_runs=reuse.max_runs
                )
            finally:
                with self._changed:
                    shelf.warming -= 1
                    if sandbox is not None:
                        shelf.lent.append(sandbox)
        if reuse is not None and sandbox is not None:
            sandbox.on_free = lambda free: self._returned(shelf, free)
        if sandbox is None:
            return backend.start(
                env,
                entrypoint,
                payload,
                state=state,
                limits=limits,
                env_vars=env_vars,
                run_id=run_id,
            )
        try:
            return sandbox.take(
                payload,
                state=state,
                env_vars=env_vars,
                timeout_seconds=limits.timeout_seconds,
                run_id=run_id,
            )
        except BaseException:
            sandbox.discard()
            raise

    def _returned(self, shelf: _Shelf, sandbox: WarmSandbox) -> None:
        """A reusable sandbox's run ended and it can serve the next: back on its shelf, unless
        the shelf is gone (dropped, idle, closed) or full."""
        with self._changed:
            if sandbox in shelf.lent:
                shelf.lent.remove(sandbox)
            kept = (
                not self._closed
                and self._shelves.get(shelf.key) is shelf
                and len(shelf.sandboxes) < self.per_key
            )
            if kept:  # it was counted in the total while lent
                shelf.sandboxes.append(sandbox)
                self._changed.notify_all()
        if not kept:
            sandbox.discard()

    @staticmethod
    def _fits(sandbox: WarmSandbox, limits: Limits) -> bool:
        return (
            sandbox.ready()
            and sandbox.alive()
            and sandbox.limits.timeout_seconds >= limits.timeout_seconds
        )

    def env_keys(self) -> set[str]:
        """The versions (`env.key`) the pool keeps sandboxes for."""
        with self._changed:
            return {key[1] for key in self._shelves}

    def drop(self, env_key: str) -> None:
        """Forget the warm sandboxes of a version: none of them is taken once this returns.
        Never waits for a sandbox: the keeper discards them (those being made once made,
        reusable ones serving a run when it ends)."""
        with self._changed:
            for key in [key for key in self._shelves if key[1] == env_key]:
                self._discarding += self._shelves.pop(key).sandboxes
            self._wake()

    def close(self, timeout: float | None = None) -> bool:
        """Discard every warm sandbox; returns when none is left, or after `timeout` seconds
        (then False: the keeper is still discarding). Later takes start cold."""
        with self._changed:
            self._closed = True
            for shelf in self._shelves.values():
                self._discarding += shelf.sandboxes
            self._shelves.clear()
            self._changed.notify_all()
            keeper = self._keeper
        if keeper is None:
            return True
        keeper.join(timeout)
        return not keeper.is_alive()

    # --- the keeper -------------------------------------------------------------------------

    def _wake(self) -> None:
        """Called with the lock held: let the keeper look again (started on first use)."""
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="warm-pool", daemon=True)
            self._keeper.start()
        self._changed.notify_all()

    def _keep(self) -> None:
        """Give back what is idle, dead or stuck, then make one sandbox where one is missing;
        sleep until the next thing to do."""
        while True:
            with self._changed:
                leaving, self._discarding = self._discarding, []
                leaving += self._leaving(time.monotonic())
                shelf = None if self._closed else self._wanting()
                if shelf is not None:
                    shelf.warming += 1
                elif not leaving:
                    if self._closed:
                        return
                    self._changed.wait(self._next_check(time.monotonic()))
                    continue
            for sandbox in leaving:
                self._discard(sandbox)
            if shelf is not None:
                self._warm(shelf)

    @staticmethod
    def _discard(sandbox: WarmSandbox) -> None:
        try:
            sandbox.discard()
        except Exception:  # noqa: BLE001 — the keeper goes on; the sweep removes what is left
            logger.exception("could not discard a warm sandbox of %s", sandbox.entrypoint)

    def _warm(self, shelf: _Shelf) -> None:
        try:
            sandbox = shelf.backend.warm(shelf.env, shelf.entrypoint, limits=shelf.limits)
        except Exception:  # noqa: BLE001 — the runs of the key start cold meanwhile
            logger.exception("could not warm a sandbox of %s", shelf.entrypoint)
            sandbox = None
        with self._changed:
            shelf.warming -= 1
            kept = (
                sandbox is not None and not self._closed and self._shelves.get(shelf.key) is shelf
            )
            if kept:
                shelf.sandboxes.append(sandbox)
            elif sandbox is None:
                shelf.wanted = False
        if sandbox is not None and not kept:  # dropped or closed while it was made
            self._discard(sandbox)

    def _leaving(self, now: float) -> list[WarmSandbox]:
        """Take off the shelves (lock held) the sandboxes of idle keys, the dead, those not
        ready within a run's timeout (an import slower than a whole run is of no use), those
        made for a shorter timeout than their key's runs now take, and reusable ones idle for
        their policy's `idle_seconds`."""
        leaving = []
        for key, shelf in list(self._shelves.items()):
            if now - shelf.used_at > self.idle_seconds:
                leaving += shelf.sandboxes
                del self._shelves[key]
                continue
            reuse = shelf.reuse
            for sandbox in list(shelf.sandboxes):
                stuck = not sandbox.ready() and now - sandbox.started > shelf.limits.timeout_seconds
                idle = reuse is not None and now - sandbox.idle_since > reuse.idle_seconds
                if stuck or not sandbox.alive():
                    shelf.wanted = False
                elif sandbox.limits == shelf.limits and not idle:
                    continue
                shelf.sandboxes.remove(sandbox)
                leaving.append(sandbox)
        return leaving

    def _kept(self) -> int:
        """How many sandboxes count toward the total (lock held): those ready, those being made
        and reusable ones serving a run (forgotten once dead or on their last run: they will
        not come back)."""
        kept = 0
        for shelf in self._shelves.values():
            shelf.lent = [sandbox for sandbox in shelf.lent if sandbox.alive()]
            kept += len(shelf.sandboxes) + shelf.warming + len(shelf.lent)
        return kept

    def _wanting(self) -> _Shelf | None:
        """The most recently used shelf short of sandboxes, while the total has room."""
        if self._kept() >= self.total:
            return None
        short = [
            shelf
            for shelf in self._shelves.values()
            if shelf.wanted and len(shelf.sandboxes) + shelf.warming < self.per_key
        ]  # a reusing shelf is never wanted: its sandboxes start with its owner's runs
        return max(short, key=lambda shelf: shelf.used_at, default=None)

    def _next_check(self, now: float) -> float | None:
        """Seconds until a shelf goes idle or a sandbox is due to be checked; None: nothing
        is kept (the next take wakes the keeper)."""
        if not self._shelves:
            return None
        idle = min(
            [shelf.used_at + self.idle_seconds for shelf in self._shelves.values()]
            + [
                sandbox.idle_since + shelf.reuse.idle_seconds
                for shelf in self._shelves.values()
                if shelf.reuse is not None
                for sandbox in shelf.sandboxes
            ]
        )
        return max(0.0, min(idle - now, CHECK_EVERY_S))
