"""What runs and builds tell webhooks: executions and agents call `notifications` with plain
data, and the event reaches a real local receiver (127.0.0.1 only), signed."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import services as agents
from agents.tests.packages import example_files, pack_files
from executions import services as executions
from notifications import services as notifications
from notifications.signing import verify
from notifications.tests.receiver import Receiver


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hook_settings(settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    settings.AIMOS_WEBHOOK_RETRY_DELAYS = [0, 0, 0]
    return settings


@pytest.mark.django_db(transaction=True)
def test_a_finished_run_is_told_to_the_webhook(owner, receiver, hook_settings, drain_queues):
    hook = notifications.create_webhook(owner, url=receiver.url, events=["execution.completed"])
    agent = agents.create_agent(owner, name="echo")
    agents.create_version(agent, SimpleUploadedFile("e.tar.gz", pack_files(example_files("echo"))))
    drain_queues()
    agent.refresh_from_db()
    execution = executions.start_execution(owner, agent, input={"ping": 1})
    drain_queues()
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    payload = verify(hook.secret, headers, body)
    assert payload["type"] == "execution.completed"
    assert payload["data"]["execution_id"] == str(execution.pk)
    assert payload["data"]["status"] == "completed"


@pytest.mark.django_db(transaction=True)
def test_a_build_is_told_to_the_webhook(owner, receiver, hook_settings, drain_queues):
    hook = notifications.create_webhook(
        owner, url=receiver.url, events=["agent.created", "build.started", "build.completed"]
    )
    agent = agents.create_agent(owner, name="echo")
    agents.create_version(agent, SimpleUploadedFile("e.tar.gz", pack_files(example_files("echo"))))
    drain_queues()
    payloads = [verify(hook.secret, headers, body) for headers, body in receiver.requests]
    assert sorted(payload["type"] for payload in payloads) == [
        "agent.created",
        "build.completed",
        "build.started",
    ]
    assert {payload["data"]["agent_id"] for payload in payloads} == {str(agent.pk)}
