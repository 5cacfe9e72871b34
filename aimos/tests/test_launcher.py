"""The launcher stops every process it started, even those that ignore SIGTERM or left its
process group (as RQ's work horses do)."""

from __future__ import annotations

import subprocess
import sys
import time

from aimos.launcher import _terminate, session_members

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)
# A pool-like child: a worker whose own child (a "work horse") takes a process group of its
# own and ignores SIGTERM, like rq's horse does.
POOL_WITH_HORSE = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "if os.fork() == 0:\n"
    "    os.setpgrp()\n"
    "    print('ready', flush=True)\n"
    "    time.sleep(600)\n"
    "    os._exit(0)\n"
    "time.sleep(600)\n"
)
POLITE = "import time; print('ready', flush=True); time.sleep(600)"


def _start(code: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout.readline() == b"ready\n"
    return child


def test_terminate_kills_children_ignoring_sigterm_and_their_other_groups_after_the_grace():
    children = [_start(IGNORES_SIGTERM), _start(POOL_WITH_HORSE), _start(POLITE)]
    sessions = {child.pid: session_members(child.pid) for child in children}
    assert len(sessions[children[1].pid]) == 2  # the pool and its horse

    began = time.monotonic()
    _terminate(children, grace=1.0)
    took = time.monotonic() - began

    assert took < 1.0 + 5
    assert all(child.returncode is not None for child in children)
    assert {pid: session_members(pid) for pid in sessions} == {pid: [] for pid in sessions}
    for child in children:
        child.stdout.close()


def test_terminate_does_not_wait_out_the_grace_when_every_child_stops_on_sigterm():
    children = [_start(POLITE), _start(POLITE)]

    began = time.monotonic()
    _terminate(children, grace=30.0)

    assert time.monotonic() - began < 5
    assert [child.returncode for child in children] == [-15, -15]
    for child in children:
        child.stdout.close()
