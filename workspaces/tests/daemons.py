"""Helpers for the sessions tests: sessions made through the real services, and a real session
daemon (`sandbox/session_agent.py`) serving one of them as a plain subprocess, on the socket
where the web process looks for it — everything of the API but the sandbox around the daemon
and the host that would have started it (`test_live_sessions.py` has those)."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

import sandbox
from workspaces import services
from workspaces.models import Session

API = "/api/v1"
AGENT = Path(sandbox.__file__).resolve().parent / "session_agent.py"
WAIT = 30.0
# The name a test takes as the session host that holds its sessions.
TEST_HOST = "tests:0"


def new_session(owner, **options) -> Session:
    """A starting session of `owner`, as `POST sessions` records it (no host takes it)."""
    return services.create_session(owner, **options)


def activate(session: Session) -> Session:
    """The session claimed and made active, as its host would once its sandbox answers."""
    assert Session.claim(session.pk, host=TEST_HOST, lease_seconds=3600)
    assert Session.activate(session.pk, host=TEST_HOST)
    session.refresh_from_db()
    return session


class Daemon:
    """The session daemon serving `session`'s workspace on its socket; ready once it said so."""

    def __init__(self, session: Session) -> None:
        self.workspace = session.workspace_dir
        self.tmp = session.directory / "tmp"
        for folder in (self.workspace, self.tmp, session.control_dir):
            folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-I", "-S", str(AGENT), "--socket", str(session.socket_path)]
        command += ["--root", str(self.workspace), "--tmp-dir", str(self.tmp)]
        command += ["--max-file-bytes", str(1024 * 1024)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        readable, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        assert readable and self.proc.stdout.readline() == b"ready\n", "the daemon never got ready"

    def stop(self) -> None:
        """The daemon ends (it kills every process it started) and its socket is gone."""
        self.proc.stdin.close()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
