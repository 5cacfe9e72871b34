"""The session host in this process, on each backend: it starts a session's sandbox on the
command the services send, the session's workspace is served through it, pause and resume
freeze and thaw it, and stop and delete leave nothing behind (no process, container or
mount)."""

import threading

import pytest

from core.errors import Conflict
from sandbox.docker_backend import LABEL_SESSION
from workspaces import operations, services
from workspaces.choices import SessionStatus
from workspaces.disks import disk_of
from workspaces.host import SessionHost
from workspaces.models import Session

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WAIT = 60


@pytest.fixture
def host(settings):
    """A session host serving in a thread of this process until the test ends."""
    stop = threading.Event()
    serving = SessionHost(name="in-test:1")
    thread = threading.Thread(target=serving.run, args=(stop,), daemon=True)
    thread.start()
    yield serving
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive()


def containers_of(session) -> list:
    import docker

    client = docker.from_env()
    try:
        return client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session.pk}"})
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_host_serves_a_session_and_leaves_nothing_of_it(settings, owner, host, backend):
    settings.AIMOS_SANDBOX = backend
    session = services.create_session(owner, workspace_mb=32)

    session = services.wait_until_started(session, WAIT)

    assert (session.status, session.error) == (SessionStatus.ACTIVE, "")
    assert session.host == host.name
    operations.write_file(session, "hello.txt", b"from the host\n")
    result = operations.shell(session, "cat hello.txt; id -u", timeout=30)
    assert result["stdout"].splitlines()[0] == "from the host"
    assert result["stdout"].splitlines()[1] != "0"  # never root inside

    paused = services.pause_session(session, wait=WAIT)
    assert paused.status == SessionStatus.PAUSED
    with pytest.raises(Conflict):
        operations.shell(paused, "true", timeout=30)
    resumed = services.resume_session(paused, wait=WAIT)
    assert resumed.status == SessionStatus.ACTIVE
    assert operations.read_file(resumed, "hello.txt")["data"] == b"from the host\n"
    services.pause_session(resumed, wait=WAIT)  # a paused session stops as any other

    stopped = services.stop_session(session, wait=WAIT)
    assert stopped.status == SessionStatus.STOPPED
    assert not disk_of(session.pk).mounted()
    if backend == "docker":
        assert containers_of(session) == []

    restarted = services.wait_until_started(services.start_session(stopped), WAIT)
    assert restarted.status == SessionStatus.ACTIVE
    assert operations.read_file(restarted, "hello.txt")["data"] == b"from the host\n"

    assert services.delete_session(restarted, wait=WAIT)
    assert not Session.objects.filter(pk=session.pk).exists()
    assert not session.directory.exists()
    if backend == "docker":
        assert containers_of(session) == []


def test_a_host_stopping_stops_what_it_holds(settings, owner):
    stop = threading.Event()
    serving = SessionHost(name="in-test:2")
    thread = threading.Thread(target=serving.run, args=(stop,), daemon=True)
    thread.start()
    session = services.wait_until_started(services.create_session(owner), WAIT)
    assert session.status == SessionStatus.ACTIVE

    stop.set()
    thread.join(WAIT)

    session.refresh_from_db()
    assert (session.status, session.host) == (SessionStatus.STOPPED, "")
    assert not disk_of(session.pk).mounted()
