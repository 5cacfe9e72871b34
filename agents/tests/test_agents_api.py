"""Agents through the API: create, list, filter, page, update, archive, delete, scoping."""

import pytest

from agents.models import Agent

pytestmark = pytest.mark.django_db

AGENTS = "/api/v1/agents"


def create(client, **body):
    return client.post(AGENTS, {"name": "helper", **body}, format="json")


def test_create_agent_starts_as_draft_owned_by_the_caller(owner_api, owner):
    response = create(owner_api, description="Helps", role="Assistant", tags=["Demo", "demo", "x"])
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "draft"
    assert body["user_id"] == str(owner.pk)
    assert body["current_version"] is None
    assert body["tags"] == ["demo", "x"]
    assert Agent.objects.get(pk=body["id"]).owner == owner


def test_duplicate_name_for_the_same_owner_is_a_field_error(owner_api, other_api):
    assert create(owner_api).status_code == 201
    response = create(owner_api)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "name"
    assert create(other_api).status_code == 201  # names are per owner


@pytest.mark.parametrize("name", ["", "Has Space", "UPPER", "-lead", "x" * 65, "semi;colon"])
def test_bad_names_are_refused(owner_api, name):
    response = create(owner_api, name=name)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "name"
    assert not Agent.objects.exists()


def test_client_cannot_set_owner_status_or_version(owner_api, owner, other):
    response = create(owner_api, user_id=str(other.pk), current_version_id="x", status="ready")
    assert response.status_code == 400
    assert not Agent.objects.exists()
    agent_id = create(owner_api).json()["id"]
    response = owner_api.patch(f"{AGENTS}/{agent_id}", {"user_id": str(other.pk)}, format="json")
    assert response.status_code == 200
    assert Agent.objects.get(pk=agent_id).owner == owner


def test_status_can_only_archive_and_restore(owner_api):
    agent_id = create(owner_api).json()["id"]
    response = owner_api.patch(f"{AGENTS}/{agent_id}", {"status": "archived"}, format="json")
    assert response.status_code == 200
    assert response.json()["status"] == "archived"
    response = owner_api.patch(f"{AGENTS}/{agent_id}", {"status": "ready"}, format="json")
    assert response.json()["status"] == "draft"  # no version: restored to what its versions say


def test_list_filters_by_status_tag_and_search_with_paging_headers(owner_api):
    for index in range(5):
        create(owner_api, name=f"agent-{index}", tags=["even" if index % 2 == 0 else "odd"])
    create(owner_api, name="zeta", description="finds the needle")
    archived = create(owner_api, name="old").json()["id"]
    owner_api.patch(f"{AGENTS}/{archived}", {"status": "archived"}, format="json")

    assert [a["name"] for a in owner_api.get(AGENTS, {"status": "archived"}).json()] == ["old"]
    assert len(owner_api.get(AGENTS, {"tag": "even"}).json()) == 3
    assert [a["name"] for a in owner_api.get(AGENTS, {"search": "needle"}).json()] == ["zeta"]
    page = owner_api.get(AGENTS, {"limit": 2, "skip": 2})
    assert len(page.json()) == 2
    assert page["X-Total-Count"] == "7"
    assert 'rel="next"' in page["Link"] and 'rel="prev"' in page["Link"]


def test_bad_paging_is_a_400(owner_api):
    response = owner_api.get(AGENTS, {"limit": "many"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "limit"


def test_list_runs_a_bounded_number_of_queries(owner_api, django_assert_max_num_queries):
    for index in range(10):
        create(owner_api, name=f"agent-{index}")
    with django_assert_max_num_queries(6):
        response = owner_api.get(AGENTS)
    assert len(response.json()) == 10


def test_outsider_gets_404_on_every_agent_endpoint(owner_api, other_api):
    agent_id = create(owner_api).json()["id"]
    base = f"{AGENTS}/{agent_id}"
    assert other_api.get(base).status_code == 404
    assert other_api.patch(base, {"description": "mine"}, format="json").status_code == 404
    assert other_api.put(base, {"name": "mine"}, format="json").status_code == 404
    assert other_api.delete(base).status_code == 404
    assert other_api.get(f"{base}/logs").status_code == 404
    assert other_api.get(f"/api/v1/logs/{agent_id}").status_code == 404
    assert other_api.get(f"{base}/versions").status_code == 404
    assert other_api.get(f"{base}/versions/1").status_code == 404
    assert other_api.post(f"{base}/versions/1/rebuild").status_code == 404
    assert other_api.get(f"{base}/versions/1/artifact").status_code == 404
    assert other_api.post(f"/api/v1/uploads/agent/{agent_id}").status_code == 404
    assert other_api.get(AGENTS).json() == []
    assert Agent.objects.get(pk=agent_id).description == ""


def test_admin_sees_every_agent(owner_api, admin_api):
    agent_id = create(owner_api).json()["id"]
    assert admin_api.get(f"{AGENTS}/{agent_id}").status_code == 200
    assert [a["id"] for a in admin_api.get(AGENTS).json()] == [agent_id]


def test_malformed_id_is_a_404(owner_api):
    assert owner_api.get(f"{AGENTS}/not-a-uuid").status_code == 404


def test_delete_removes_the_agent(owner_api):
    agent_id = create(owner_api).json()["id"]
    assert owner_api.delete(f"{AGENTS}/{agent_id}").status_code == 204
    assert not Agent.objects.filter(pk=agent_id).exists()


def test_logs_record_what_happened(owner_api):
    agent_id = create(owner_api).json()["id"]
    owner_api.patch(f"{AGENTS}/{agent_id}", {"status": "archived"}, format="json")
    messages = [entry["message"] for entry in owner_api.get(f"{AGENTS}/{agent_id}/logs").json()]
    assert messages == ["Agent created", "Agent archived"]
    assert owner_api.get(f"{AGENTS}/{agent_id}/logs", {"level": "error"}).json() == []
    compat = owner_api.get(f"/api/v1/logs/{agent_id}").json()
    assert [entry["message"] for entry in compat] == messages
    assert set(compat[0]) == {"timestamp", "level", "message", "source", "metadata"}
