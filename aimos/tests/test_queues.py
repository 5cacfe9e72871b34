"""RQ jobs are JSON in Redis, never pickles: the platform writes them so, its workers read them
so (whatever `--serializer` says), and a pickled job forged into Redis is not run. Every client
of Redis reaches it with REDIS_URL as given, password included."""

import asyncio
import base64
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
import zlib
from pathlib import Path

import django_rq
import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer, PickleSerializer

from agents import builds as agent_builds
from agents import jobs as agent_jobs
from agents import services as agent_services
from agents.choices import VersionStatus
from agents.models import AgentVersion
from agents.tests.packages import example_files, pack_files
from aimos import jobs as aimos_jobs
from aimos import prometheus
from aimos.health import check_redis
from executions import services as execution_services
from notifications import jobs as notification_jobs

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
PICKLE_PROTOCOL_OPCODE = b"\x80"


def stored_job(connection, key) -> list:
    """The `data` field of a job hash, as RQ stored it (zlib of the serialized call), decoded
    as JSON: [function, instance, args, kwargs]."""
    raw = zlib.decompress(connection.hget(key, "data"))
    assert not raw.startswith(PICKLE_PROTOCOL_OPCODE), raw[:20]
    return json.loads(raw)


def job_hashes(connection) -> set[bytes]:
    return {key for key in connection.scan_iter("rq:job:*") if connection.type(key) == b"hash"}


ENQUEUES = {
    "build": (
        lambda: agent_jobs.enqueue_build(uuid.uuid4()),
        "agents.jobs.build_version",
    ),
    "run": (
        lambda: execution_services.enqueue_run(uuid.uuid4(), attempt=1),
        "executions.jobs.run_execution",
    ),
    "sequential batch": (
        lambda: execution_services._enqueue_batch([uuid.uuid4(), uuid.uuid4()], parallel=False),
        "executions.jobs.run_execution",
    ),
    "webhook delivery": (
        lambda: notification_jobs.enqueue_delivery(f"msg_{uuid.uuid4().hex}"),
        "notifications.jobs.deliver_webhook",
    ),
}


@pytest.mark.parametrize("name", ENQUEUES)
def test_every_job_the_platform_enqueues_is_stored_as_json(rq_queues, name):
    enqueue, function = ENQUEUES[name]
    connection = rq_queues[0].connection
    before = job_hashes(connection)

    enqueue()

    new = job_hashes(connection) - before
    assert new
    for key in new:
        func_name, instance, args, kwargs = stored_job(connection, key)
        assert func_name == function
        assert instance is None
        assert all(isinstance(arg, str) for arg in args)
        assert kwargs == {}


@pytest.mark.django_db(transaction=True)
def test_a_job_runs_through_a_real_worker_and_gives_its_result_as_json(drain_queues):
    job = django_rq.get_queue("default", commit_mode="auto").enqueue(aimos_jobs.ping)

    drain_queues()

    job = Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    assert result == "pong"
    # As stored: the base64 of the serialized value, which is JSON.
    [(_, entry)] = job.connection.xrevrange(f"rq:results:{job.id}", count=1)
    assert json.loads(base64.b64decode(entry[b"return_value"])) == result


@pytest.mark.django_db(transaction=True)
def test_a_failed_build_job_is_failed_by_its_callback_from_the_json_arguments(
    owner, drain_queues, monkeypatch
):
    agent = agent_services.create_agent(owner, name="probe")
    archive = SimpleUploadedFile("echo.tar.gz", pack_files(example_files("echo")))

    def worker_dies_mid_build(version_id):
        AgentVersion.claim_build(version_id)
        raise RuntimeError("the worker went away")

    monkeypatch.setattr(agent_builds, "build_version", worker_dies_mid_build)
    version = agent_services.create_version(agent, archive)  # its build job is queued on commit

    drain_queues()

    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "RuntimeError: the worker went away" in version.build_log


class OpensAFile:
    """Unpickling this creates the file `path`: any code could run in its place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def forge_pickled_job(connection, marker: Path) -> Job:
    """What an attacker who reaches Redis writes with RQ's default serializer: a job whose
    arguments unpickle into code of their choice (here: creating `marker`)."""
    forged = django_rq.get_queue(
        "default", commit_mode="auto", serializer=PickleSerializer
    ).enqueue(print, OpensAFile(marker))
    raw = zlib.decompress(connection.hget(forged.key, "data"))
    assert raw.startswith(PICKLE_PROTOCOL_OPCODE)
    # The payload is live: unpickled, it creates the file.
    _, _, (opened,), _ = pickle.loads(raw)
    opened.close()
    assert marker.exists()
    marker.unlink()
    return forged


def assert_failed_unrun(forged: Job, marker: Path) -> None:
    assert not marker.exists()
    job = Job.fetch(forged.id, connection=forged.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert "DeserializationError" in job.exc_info


def test_a_pickled_job_forged_into_redis_is_not_run_by_the_worker(
    rq_queues, drain_queues, tmp_path
):
    marker = tmp_path / "pwned"
    forged = forge_pickled_job(rq_queues[0].connection, marker)
    honest = django_rq.get_queue("default", commit_mode="auto").enqueue(aimos_jobs.ping)

    drain_queues()

    assert_failed_unrun(forged, marker)
    assert honest.get_status() == JobStatus.FINISHED  # the worker went on with the next job


@pytest.mark.parametrize(
    "function, callback",
    [(os.mkdir, None), (aimos_jobs.ping, os.mkdir)],
    ids=["function", "callback"],
)
def test_a_json_job_naming_a_function_outside_our_jobs_is_not_run(
    rq_queues, drain_queues, tmp_path, function, callback
):
    from rq import Callback

    marker = tmp_path / "pwned"
    args = (str(marker),) if callback is None else ()
    on_success = Callback(callback) if callback is not None else None
    forged = django_rq.get_queue("default", commit_mode="auto").enqueue(
        function, *args, on_success=on_success
    )

    drain_queues()

    assert not marker.exists()
    job = Job.fetch(forged.id, connection=forged.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    assert "is not a job of this project" in job.exc_info


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["rqworker", "default", "--burst"],
        ["rqworker-pool", "default", "--burst", "--num-workers", "1"],
    ],
    ids=["rqworker", "rqworker-pool"],
)
def test_the_workers_manage_py_starts_do_not_run_a_pickled_job(rq_queues, tmp_path, command):
    # Started as the launcher and the live stack start them: without --serializer, whose
    # default in django-rq is pickle.
    marker = tmp_path / "pwned"
    forged = forge_pickled_job(rq_queues[0].connection, marker)
    env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "SECRET_KEY": settings.SECRET_KEY}

    finished = subprocess.run(
        [sys.executable, MANAGE, *command],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert_failed_unrun(forged, marker)


def test_every_client_of_redis_reaches_it_with_the_configured_url():
    """Under CI, REDIS_URL carries a password: each of these must authenticate with it."""
    assert django_rq.get_queue("default").connection.ping()
    assert django_rq.get_connection("runs").ping()
    key = f"probe-{uuid.uuid4().hex}"
    cache.set(key, "seen", 10)
    assert cache.get(key) == "seen"
    assert check_redis() == "ok"
    assert prometheus._redis().ping()

    async def channel_layer_round_trip():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "probe"})
        return await layer.receive(channel)

    # asyncio.run in a thread of its own: an earlier test may leave this thread's loop set.
    received = []
    thread = threading.Thread(
        target=lambda: received.append(asyncio.run(channel_layer_round_trip()))
    )
    thread.start()
    thread.join(30)
    assert received == [{"type": "probe"}]
