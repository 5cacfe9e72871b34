"""Dashboard pages of agents: the list and its filters, the create form, uploads without
JavaScript, the build JSON the page polls, the run form, archiving, and outsiders' 404s."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from agents import services
from agents.models import Agent, AgentVersion
from agents.tests.packages import agent_files, example_files, pack_files
from executions.models import Execution
from executions.tests.runs import deploy

pytestmark = pytest.mark.django_db
# Builds are queued when their transaction commits: these tests commit for real.
BUILDS = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def agent(owner):
    return services.create_agent(owner, name="probe", description="Looks around")


def archive(example="echo", name="echo.tar.gz"):
    return SimpleUploadedFile(name, pack_files(example_files(example)), "application/gzip")


def test_agent_pages_want_a_login(client, agent):
    for url in (
        reverse("agent-list"),
        reverse("agent-create"),
        reverse("agent-detail", args=[agent.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login"))


def test_list_shows_own_agents_with_status_and_filters(page, owner, other, agent):
    services.create_agent(owner, name="writer", description="Writes stories")
    services.create_agent(other, name="foreign")
    services.update_agent(services.create_agent(owner, name="old"), status="archived")

    everything = page.get(reverse("agent-list")).content.decode()
    assert all(f'data-agent="{name}"' in everything for name in ("probe", "writer", "old"))
    assert "foreign" not in everything
    assert 'class="badge badge-draft"' in everything

    searched = page.get(reverse("agent-list"), {"search": "stories"}).content.decode()
    assert 'data-agent="writer"' in searched
    assert 'data-agent="probe"' not in searched

    archived = page.get(reverse("agent-list"), {"status": "archived"}).content.decode()
    assert 'data-agent="old"' in archived
    assert 'data-agent="writer"' not in archived

    none = page.get(reverse("agent-list"), {"search": "nothing-like-this"}).content.decode()
    assert "No agent matches these filters" in none


@BUILDS
def test_list_shows_the_success_rate(page, owner, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    from executions.outcomes import finish
    from executions.services import start_execution

    for status in ("completed", "completed", "completed", "failed"):
        execution = start_execution(owner, agent, input={}, enqueue=False)
        finish(
            execution, status, from_states=["pending"], reason="" if status == "completed" else "x"
        )
    body = page.get(reverse("agent-list")).content.decode()
    assert "75%" in body
    assert 'title="3 of 4 completed"' in body


def test_create_form_calls_the_service_and_refuses_a_taken_name(page, owner, agent):
    response = page.post(
        reverse("agent-create"),
        {"name": "summarizer", "description": "Sums up", "tags": "NLP, demo, nlp"},
    )
    created = Agent.objects.get(owner=owner, name="summarizer")
    assert response.status_code == 302
    assert response["Location"] == reverse("agent-detail", args=[created.pk])
    assert created.tags == ["nlp", "demo"]
    assert created.logs.filter(message="Agent created").exists()

    taken = page.post(reverse("agent-create"), {"name": "probe"})
    assert taken.status_code == 400
    assert "You already have an agent with this name." in taken.content.decode()
    bad = page.post(reverse("agent-create"), {"name": "Not A Slug"})
    assert bad.status_code == 400
    assert Agent.objects.filter(owner=owner).count() == 2


def test_upload_without_javascript_queues_a_version(page, agent):
    response = page.post(reverse("version-upload", args=[agent.pk]), {"file": archive()})
    assert response.status_code == 302
    version = AgentVersion.objects.get(agent=agent)
    assert (version.number, version.status) == (1, "queued")
    detail = page.get(reverse("agent-detail", args=[agent.pk])).content.decode()
    assert "Version v1 uploaded; it is queued to build." in detail
    assert f'data-poll="{reverse("version-build", args=[agent.pk, 1])}"' in detail


def test_a_bad_upload_says_why_and_stores_nothing(page, agent):
    bad = SimpleUploadedFile("x.tar.gz", pack_files({"agent/main.py": "x = 1\n"}))
    response = page.post(reverse("version-upload", args=[agent.pk]), {"file": bad})
    assert response.status_code == 400
    assert "aimos.yaml" in response.content.decode()
    missing = page.post(reverse("version-upload", args=[agent.pk]), {})
    assert missing.status_code == 400
    assert not AgentVersion.objects.filter(agent=agent).exists()


@BUILDS
def test_build_json_follows_the_build(page, agent, drain_queues):
    services.create_version(agent, archive())
    url = reverse("version-build", args=[agent.pk, 1])
    queued = page.get(url).json()
    assert (queued["status"], queued["done"], queued["agent_status"]) == (
        "queued",
        False,
        "building",
    )

    drain_queues()

    built = page.get(url).json()
    assert (built["status"], built["done"], built["agent_status"]) == ("ready", True, "ready")
    assert "Build succeeded" in built["build_log"]
    assert page.get(reverse("version-build", args=[agent.pk, 2])).status_code == 404


@BUILDS
def test_agent_page_shows_versions_build_log_and_run_form(page, owner, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    body = page.get(reverse("agent-detail", args=[agent.pk])).content.decode()
    assert 'id="run-form"' in body
    assert "Build succeeded" in body
    assert 'class="badge badge-ready"' in body
    assert 'data-api="/api/v1/agents/' in body


@BUILDS
def test_run_form_starts_an_execution_with_the_json_input(page, owner, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    response = page.post(
        reverse("agent-run", args=[agent.pk]),
        {"input": '{"topic": "a heron", "n": [1, 2]}', "timeout_seconds": "12"},
    )
    execution = Execution.objects.get(agent=agent)
    assert response.status_code == 302
    assert response["Location"] == reverse("execution-detail", args=[execution.pk])
    assert execution.input == {"topic": "a heron", "n": [1, 2]}
    assert execution.timeout_seconds == 12
    assert execution.user == owner


@BUILDS
def test_run_form_refuses_invalid_json_with_a_clear_error(page, owner, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    response = page.post(reverse("agent-run", args=[agent.pk]), {"input": '{"topic": }'})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Not valid JSON: Expecting value (line 1, column 11)." in body
    assert "{&quot;topic&quot;: }" in body  # what was typed stays in the form
    assert not Execution.objects.exists()


def test_run_form_says_when_the_agent_cannot_run(page, agent):
    response = page.post(reverse("agent-run", args=[agent.pk]), {"input": "{}"})
    assert response.status_code == 409
    assert "no ready version to run" in response.content.decode()
    assert not Execution.objects.exists()


def test_archive_and_restore_from_the_page(page, agent):
    page.post(reverse("agent-archive", args=[agent.pk]))
    agent.refresh_from_db()
    assert agent.status == "archived"
    page.post(reverse("agent-archive", args=[agent.pk]))
    agent.refresh_from_db()
    assert agent.status == "draft"


def test_another_users_agent_is_a_404_everywhere(client, other, agent):
    services.create_version(agent, archive())
    client.force_login(other)
    assert client.get(reverse("agent-detail", args=[agent.pk])).status_code == 404
    assert client.get(reverse("version-build", args=[agent.pk, 1])).status_code == 404
    assert client.post(reverse("agent-run", args=[agent.pk]), {"input": "{}"}).status_code == 404
    upload = client.post(reverse("version-upload", args=[agent.pk]), {"file": archive()})
    assert upload.status_code == 404
    assert client.post(reverse("agent-archive", args=[agent.pk])).status_code == 404
    assert client.post(reverse("version-rebuild", args=[agent.pk, 1])).status_code == 404
    agent.refresh_from_db()
    assert agent.status == "building"
    assert agent.versions.count() == 1
    assert not Execution.objects.exists()
    assert "Not found" in client.get(reverse("agent-detail", args=[agent.pk])).content.decode()


@BUILDS
def test_a_failed_build_shows_its_log_and_can_be_rebuilt(page, agent, drain_queues):
    code = "def handle(payload):\n    return payload\n"
    broken = agent_files(code)
    broken["aimos.yaml"] = broken["aimos.yaml"].replace("agent.main:handle", "agent.main:nope")
    services.create_version(agent, SimpleUploadedFile("b.tar.gz", pack_files(broken)))
    drain_queues()
    body = page.get(reverse("agent-detail", args=[agent.pk])).content.decode()
    assert 'class="badge badge-failed"' in body
    assert "Build failed" in body
    response = page.post(
        reverse("version-rebuild", args=[agent.pk, 1]), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    assert json.loads(response.content)["detail"] == "Rebuilding v1."
    assert AgentVersion.objects.get(agent=agent).status == "queued"


@BUILDS
def test_run_again_brings_the_input_along(page, owner, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    url = reverse("agent-detail", args=[agent.pk])
    body = page.get(url, {"input": '{"topic": "a fox"}'}).content.decode()
    assert "{&quot;topic&quot;: &quot;a fox&quot;}</textarea>" in body
    assert "Version v1 uploaded" in body  # the agent's activity
