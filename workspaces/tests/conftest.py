"""Fixtures of the sessions tests: a folder of their own for sessions, an owner's active
session served by a real daemon."""

import shutil
import tempfile
from pathlib import Path

import pytest

from workspaces.tests.daemons import Daemon, activate, new_session


@pytest.fixture(autouse=True)
def session_root(settings):
    """Sessions under a folder of this test's own, removed after it."""
    root = Path(tempfile.mkdtemp(prefix="aimos-s-"))
    settings.AIMOS_SESSION_ROOT = root
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def active_session(owner):
    return activate(new_session(owner))


@pytest.fixture
def daemon(active_session):
    served = Daemon(active_session)
    yield served
    served.stop()
