"""The admin: upload a version, watch it build, rebuild it, archive agents."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import services
from agents.models import Agent, AgentVersion
from agents.tests.packages import agent_files, example_files, pack_files

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


def test_admin_uploads_a_version_that_builds_ready(admin_client, owner, drain_queues):
    agent = services.create_agent(owner, name="echo")
    archive = SimpleUploadedFile("echo.tar.gz", pack_files(example_files("echo")))
    response = admin_client.post(
        "/admin/agents/agentversion/add/", {"agent": agent.pk, "file": archive}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    version = AgentVersion.objects.get(agent=agent)
    assert version.status == "queued"
    drain_queues()
    version.refresh_from_db()
    assert version.status == "ready", version.build_log
    page = admin_client.get(f"/admin/agents/agentversion/{version.pk}/change/")
    assert page.status_code == 200
    assert "Build succeeded" in page.content.decode()


def test_admin_upload_of_a_bad_archive_shows_the_reason(admin_client, owner):
    agent = services.create_agent(owner, name="echo")
    archive = SimpleUploadedFile("echo.tar.gz", b"not a tarball")
    response = admin_client.post(
        "/admin/agents/agentversion/add/", {"agent": agent.pk, "file": archive}
    )
    assert response.status_code == 200
    assert "File must be a .tar.gz archive" in response.content.decode()
    assert not AgentVersion.objects.exists()


def test_admin_rebuild_action_requeues_the_version(admin_client, owner, drain_queues):
    agent = services.create_agent(owner, name="probe")
    services.create_version(
        agent, SimpleUploadedFile("a.tar.gz", pack_files(agent_files("x = 1\n")))
    )
    drain_queues()
    version = AgentVersion.objects.get(agent=agent)
    assert version.status == "failed"
    response = admin_client.post(
        "/admin/agents/agentversion/",
        {"action": "rebuild_versions", "_selected_action": [version.pk]},
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.status == "queued"


def test_admin_archive_action_and_filters(admin_client, owner):
    agent = services.create_agent(owner, name="probe")
    response = admin_client.post(
        "/admin/agents/agent/", {"action": "archive_agents", "_selected_action": [agent.pk]}
    )
    assert response.status_code == 302
    assert Agent.objects.get(pk=agent.pk).status == "archived"
    listing = admin_client.get("/admin/agents/agent/", {"status__exact": "archived", "q": "probe"})
    assert listing.status_code == 200
    assert "probe" in listing.content.decode()
    assert admin_client.get(f"/admin/agents/agent/{agent.pk}/change/").status_code == 200
    assert admin_client.get("/admin/agents/agentlog/").status_code == 200


def change_agent(client, agent, **fields):
    """Post the admin's change form of `agent` (with its versions inline, empty)."""
    data = {"owner": agent.owner_id, "name": agent.name, "description": "", "role": ""}
    data |= {"tags": "[]", "versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"}
    return client.post(f"/admin/agents/agent/{agent.pk}/change/", data | fields)


def test_admin_refuses_an_agent_name_the_api_would_refuse(admin_client, owner):
    agent = services.create_agent(owner, name="echo")
    response = change_agent(admin_client, agent, name="Not A Slug")
    assert response.status_code == 200
    assert "Use 1-64 lowercase letters" in response.content.decode()
    agent.refresh_from_db()
    assert agent.name == "echo"


def test_admin_stores_tags_the_way_the_api_does(admin_client, owner):
    agent = services.create_agent(owner, name="echo")
    response = change_agent(admin_client, agent, tags='[" NLP", "nlp", "demo"]')
    assert response.status_code == 302, response.content.decode()[:2000]
    agent.refresh_from_db()
    assert agent.tags == ["nlp", "demo"]
