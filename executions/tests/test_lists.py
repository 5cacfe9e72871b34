"""Execution lists: filters, paging, scoping and bounded queries; agents' run statistics."""

from datetime import timedelta

import pytest
from django.utils import timezone

from executions import control, services
from executions.models import Execution
from executions.tests.runs import API, deploy

pytestmark = pytest.mark.django_db(transaction=True)

EXECUTIONS = f"{API}/executions"


@pytest.fixture
def history(owner, drain_queues) -> dict:
    """echo: one completed run, then (after `between`) one pending and one cancelled;
    tools: one pending run in a batch."""
    echo = deploy(owner, "echo", drain_queues)
    tools = deploy(owner, "tools", drain_queues)
    done = services.start_execution(owner, echo, input=1)
    drain_queues()
    between = timezone.now()
    pending = services.start_execution(owner, echo, input=2)
    cancelled = control.cancel_execution(services.start_execution(owner, echo, input=3))
    batch = services.start_batch(owner, agent_ids=[tools.pk])
    return {
        "echo": echo,
        "tools": tools,
        "between": between,
        "done": str(done.pk),
        "pending": str(pending.pk),
        "cancelled": str(cancelled.pk),
        "batched": str(batch.executions.get().pk),
        "batch": str(batch.pk),
    }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [run["id"] for run in response.json()]


def test_the_list_is_newest_first_with_the_total(owner_api, history):
    response = owner_api.get(EXECUTIONS)

    expected = [history[k] for k in ("batched", "cancelled", "pending", "done")]
    assert ids(response) == expected
    assert response["X-Total-Count"] == "4"


def test_filters_by_agent_version_status_and_batch(owner_api, history):
    echo = history["echo"]

    assert set(ids(owner_api.get(EXECUTIONS, {"agent_id": str(echo.pk)}))) == {
        history["done"],
        history["pending"],
        history["cancelled"],
    }
    version = str(history["tools"].current_version_id)
    assert ids(owner_api.get(EXECUTIONS, {"agent_version_id": version})) == [history["batched"]]
    assert ids(owner_api.get(EXECUTIONS, {"status": "completed"})) == [history["done"]]
    assert ids(owner_api.get(EXECUTIONS, {"status": "success"})) == [history["done"]]
    assert ids(owner_api.get(EXECUTIONS, {"status": "cancelled"})) == [history["cancelled"]]
    assert ids(owner_api.get(EXECUTIONS, {"batch": history["batch"]})) == [history["batched"]]
    combined = {"agent_id": str(echo.pk), "status": "pending"}
    assert ids(owner_api.get(EXECUTIONS, combined)) == [history["pending"]]


def test_filters_by_creation_time(owner_api, history):
    between = history["between"].isoformat()

    after = ids(owner_api.get(EXECUTIONS, {"created_after": between}))
    before = ids(owner_api.get(EXECUTIONS, {"created_before": between}))

    assert set(after) == {history["pending"], history["cancelled"], history["batched"]}
    assert before == [history["done"]]
    tomorrow = (timezone.now() + timedelta(days=1)).isoformat()
    assert ids(owner_api.get(EXECUTIONS, {"created_after": tomorrow})) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("agent_id", "not-a-uuid"),
        ("agent_version_id", "7"),
        ("status", "sleeping"),
        ("batch", "x"),
        ("created_after", "yesterday"),
        ("created_before", "2024-13-45T00:00:00"),
    ],
)
def test_bad_filter_values_are_a_400(owner_api, name, value):
    response = owner_api.get(EXECUTIONS, {name: value})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == name


def test_paging_with_limit_and_skip_and_links(owner_api, history):
    first = owner_api.get(EXECUTIONS, {"limit": 3})
    rest = owner_api.get(EXECUTIONS, {"limit": 3, "skip": 3})

    assert len(ids(first)) == 3
    assert ids(rest) == [history["done"]]
    assert first["X-Total-Count"] == rest["X-Total-Count"] == "4"
    assert 'rel="next"' in first["Link"] and "prev" not in first["Link"]
    assert 'rel="prev"' in rest["Link"] and "next" not in rest["Link"]


def test_active_filters_too(owner_api, history):
    echo = str(history["echo"].pk)

    assert ids(owner_api.get(f"{EXECUTIONS}/active", {"agent_id": echo})) == [history["pending"]]


def test_an_admin_sees_everyones_runs(admin_api, other_api, history):
    assert len(ids(admin_api.get(EXECUTIONS))) == 4
    assert ids(other_api.get(EXECUTIONS)) == []


def test_lists_run_a_bounded_number_of_queries(
    owner, owner_api, history, django_assert_max_num_queries
):
    for index in range(20):
        services.start_execution(owner, history["echo"], input=index)

    with django_assert_max_num_queries(3):
        assert len(ids(owner_api.get(EXECUTIONS))) == 24
    with django_assert_max_num_queries(3):
        assert len(ids(owner_api.get(f"{EXECUTIONS}/active"))) == 22
    with django_assert_max_num_queries(3):
        assert len(ids(owner_api.get(f"{API}/agents"))) == 2


def test_agents_carry_their_run_statistics(owner, owner_api, history):
    echo = history["echo"]
    newest = Execution.objects.filter(agent=echo).order_by("-created_at").first()

    listed = {agent["name"]: agent for agent in owner_api.get(f"{API}/agents").json()}
    detail = owner_api.get(f"{API}/agents/{echo.pk}").json()

    for body in (listed["echo"], detail):
        assert body["total_executions"] == 3
        assert body["successful_executions"] == 1
        assert body["success_rate"] == 33.3
        assert body["last_execution"] == newest.created_at.isoformat().replace("+00:00", "Z")
    tools = listed["tools"]
    assert (tools["total_executions"], tools["successful_executions"]) == (1, 0)
    assert tools["success_rate"] == 0.0


def test_a_new_agent_has_no_runs(owner_api):
    created = owner_api.post(f"{API}/agents", {"name": "fresh"}, format="json").json()

    assert created["total_executions"] == 0
    assert created["successful_executions"] == 0
    assert created["success_rate"] == 0.0
    assert created["last_execution"] is None
