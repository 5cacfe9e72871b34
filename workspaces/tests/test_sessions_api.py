"""Sessions through the API as a user sees them, without a session host: what is recorded, what
the hosts are told, the caps and the refusals. (`test_live_sessions.py` has the host.)"""

import django_rq
import pytest

from agents import services as agents
from core.errors import ServiceError
from executions.tests.runs import deploy
from workspaces import commands, services
from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.tests.daemons import API, TEST_HOST, activate, new_session

pytestmark = pytest.mark.django_db
# Commands leave once the transaction commits: the tests that read them commit theirs.
COMMITTING = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_waiting(settings):
    """No session host runs here: requests answer at once instead of waiting for one."""
    settings.AIMOS_MAX_WAIT_SECONDS = 0


@pytest.fixture
def redis():
    connection = django_rq.get_connection("default")
    connection.delete(commands.SHARED, commands.OWN.format(TEST_HOST))
    yield connection
    connection.delete(commands.SHARED, commands.OWN.format(TEST_HOST))


def told(redis, host: str = "nobody") -> list[tuple[str, str]]:
    """Every command waiting for `host` (its own list, then the shared one)."""
    found = []
    while (command := commands.receive(redis, host, 0.01)) is not None:
        found.append((command.op, command.session_id))
    return found


@COMMITTING
def test_create_records_a_starting_session_and_tells_the_hosts(owner_api, owner, redis, settings):
    response = owner_api.post(f"{API}/sessions", {}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "starting"
    assert body["session_id"] == body["id"]
    assert body["user_id"] == str(owner.pk)
    assert body["agent_id"] is None
    assert body["workspace_mb"] == settings.AIMOS_SESSION_WORKSPACE_MB
    assert body["idle_timeout_seconds"] == settings.AIMOS_SESSION_IDLE_SECONDS
    assert body["network"] is False
    assert body["backend"] == settings.AIMOS_SANDBOX
    assert told(redis) == [("start", body["id"])]


def test_create_takes_the_workspace_size_and_idle_timeout_asked_for(owner_api):
    response = owner_api.post(
        f"{API}/sessions", {"workspace_mb": 64, "idle_timeout_seconds": 120}, format="json"
    )

    assert response.status_code == 201
    assert (response.json()["workspace_mb"], response.json()["idle_timeout_seconds"]) == (64, 120)


def test_network_is_given_only_when_the_server_allows_it(owner_api, settings):
    settings.AIMOS_SANDBOX_ALLOW_NETWORK = False
    refused = owner_api.post(f"{API}/sessions", {"network": True}, format="json")
    settings.AIMOS_SANDBOX_ALLOW_NETWORK = True
    given = owner_api.post(f"{API}/sessions", {"network": True}, format="json")

    assert refused.json()["network"] is False
    assert given.json()["network"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workspace_mb": 15}, "workspace_mb"),
        ({"workspace_mb": 1025}, "workspace_mb"),
        ({"workspace_mb": "big"}, "workspace_mb"),
        ({"idle_timeout_seconds": 0}, "idle_timeout_seconds"),
        ({"network": "perhaps"}, "network"),
    ],
)
def test_bad_values_are_a_400_naming_the_field(owner_api, body, field):
    response = owner_api.post(f"{API}/sessions", body, format="json")

    assert response.status_code == 400
    assert [error["field"] for error in response.json()["errors"]] == [field]
    assert not Session.objects.exists()


def test_a_workspace_over_the_servers_maximum_is_refused_by_the_service_too(owner, settings):
    settings.AIMOS_SESSION_MAX_WORKSPACE_MB = 32
    with pytest.raises(ServiceError) as refused:
        services.create_session(owner, workspace_mb=64)
    assert refused.value.errors[0]["field"] == "workspace_mb"


def test_a_body_that_is_not_json_is_a_json_400(owner_api):
    response = owner_api.generic(
        "POST", f"{API}/sessions", "{not json", content_type="application/json"
    )

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"


def test_an_unknown_agent_is_a_404(owner_api):
    response = owner_api.post(f"{API}/sessions", {"agent_id": "nobody"}, format="json")

    assert response.status_code == 404
    assert not Session.objects.exists()


def test_an_agent_without_a_ready_version_is_a_409(owner_api, owner):
    agents.create_agent(owner, name="draft")

    response = owner_api.post(f"{API}/sessions", {"agent_id": "draft"}, format="json")

    assert response.status_code == 409
    assert not Session.objects.exists()


@pytest.mark.slow
@COMMITTING
def test_a_session_of_an_agent_has_its_current_version_and_its_limits(
    owner_api, owner, drain_queues
):
    agent = deploy(owner, "echo", drain_queues)

    response = owner_api.post(f"{API}/sessions", {"agent_id": str(agent.pk)}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["agent_id"] == str(agent.pk)
    assert body["agent_version_id"] == str(agent.current_version_id)
    assert (body["memory_mb"], body["cpus"], body["pids"]) == (128, 0.5, 16)


# --- caps ----------------------------------------------------------------------------------------


def test_a_user_has_at_most_the_allowed_number_of_running_sessions(owner_api, owner, settings):
    settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER = 2
    for _ in range(2):
        assert owner_api.post(f"{API}/sessions", {}, format="json").status_code == 201

    refused = owner_api.post(f"{API}/sessions", {}, format="json")

    assert refused.status_code == 409
    assert refused.json()["code"] == "session_limit"
    assert Session.objects.filter(owner=owner).count() == 2


def test_stopped_failed_and_deleted_sessions_do_not_count(owner_api, owner, settings):
    settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER = 1
    stopped, failed, deleted = new_session(owner), None, None
    Session.stop_unclaimed(stopped.pk)
    failed = new_session(owner)
    Session.fail(failed.pk, "its sandbox exited")
    deleted = new_session(owner)
    Session.mark_deleting(deleted.pk)

    assert owner_api.post(f"{API}/sessions", {}, format="json").status_code == 201


def test_another_users_sessions_do_not_count(owner_api, other, settings):
    settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER = 1
    new_session(other)

    assert owner_api.post(f"{API}/sessions", {}, format="json").status_code == 201


def test_a_stopped_session_does_not_start_again_past_the_cap(owner_api, owner, settings):
    settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER = 1
    stopped = new_session(owner)
    Session.stop_unclaimed(stopped.pk)
    new_session(owner)

    response = owner_api.post(f"{API}/sessions/{stopped.pk}/start")

    assert response.status_code == 409
    assert response.json()["code"] == "session_limit"


def test_no_sessions_at_all_when_the_cap_is_zero(owner_api, settings):
    settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER = 0

    assert owner_api.post(f"{API}/sessions", {}, format="json").status_code == 409


# --- list and get --------------------------------------------------------------------------------


def test_the_list_holds_the_callers_visible_sessions_newest_first(owner_api, owner, other):
    older, newer = new_session(owner), new_session(owner)
    gone = new_session(owner)
    Session.mark_deleting(gone.pk)
    new_session(other)

    response = owner_api.get(f"{API}/sessions")

    assert response.status_code == 200
    assert [s["id"] for s in response.json()] == [str(newer.pk), str(older.pk)]
    assert response["X-Total-Count"] == "2"


def test_the_list_filters_by_status(owner_api, owner):
    running = activate(new_session(owner))
    Session.stop_unclaimed(new_session(owner).pk)

    response = owner_api.get(f"{API}/sessions", {"status": "active"})

    assert [s["id"] for s in response.json()] == [str(running.pk)]
    assert owner_api.get(f"{API}/sessions", {"status": "asleep"}).status_code == 400


def test_an_admin_sees_everyones_sessions(admin_api, owner, other):
    new_session(owner)
    new_session(other)

    assert len(admin_api.get(f"{API}/sessions").json()) == 2


def test_a_session_is_read_by_its_id(owner_api, owner):
    session = new_session(owner)

    response = owner_api.get(f"{API}/sessions/{session.pk}")

    assert response.status_code == 200
    assert response.json()["id"] == str(session.pk)
    assert owner_api.get(f"{API}/sessions/not-a-uuid").status_code == 404


def test_the_list_reads_a_fixed_number_of_queries(owner_api, owner, django_assert_max_num_queries):
    for _ in range(3):
        new_session(owner)

    with django_assert_max_num_queries(6):
        assert len(owner_api.get(f"{API}/sessions").json()) == 3


# --- stop, start, delete -------------------------------------------------------------------------


@COMMITTING
def test_stopping_a_start_no_host_took_stops_it_at_once(owner_api, owner, redis):
    session = new_session(owner)
    told(redis)

    response = owner_api.post(f"{API}/sessions/{session.pk}/stop")

    assert response.status_code == 200
    assert response.json()["status"] == "stopped"
    assert told(redis) == []


@COMMITTING
def test_stopping_a_held_session_tells_its_own_host(owner_api, owner, redis):
    session = activate(new_session(owner))
    told(redis)

    response = owner_api.post(f"{API}/sessions/{session.pk}/stop")

    assert response.status_code == 200
    assert response.json()["status"] == "active"  # its host has not stopped it yet
    assert told(redis, TEST_HOST) == [("stop", str(session.pk))]


def test_stopping_a_stopped_session_is_a_409(owner_api, owner):
    session = new_session(owner)
    Session.stop_unclaimed(session.pk)

    assert owner_api.post(f"{API}/sessions/{session.pk}/stop").status_code == 409


@COMMITTING
def test_starting_a_stopped_session_asks_the_hosts_again(owner_api, owner, redis):
    session = new_session(owner)
    Session.stop_unclaimed(session.pk)
    told(redis)

    response = owner_api.post(f"{API}/sessions/{session.pk}/start")

    assert response.status_code == 200
    assert response.json()["status"] == "starting"
    assert told(redis) == [("start", str(session.pk))]


def test_starting_a_running_session_is_a_409(owner_api, owner):
    session = activate(new_session(owner))

    response = owner_api.post(f"{API}/sessions/{session.pk}/start")

    assert response.status_code == 409
    session.refresh_from_db()
    assert session.status == SessionStatus.ACTIVE


@COMMITTING
def test_a_deleted_session_is_gone_at_once_and_its_host_is_told(owner_api, owner, redis):
    held = activate(new_session(owner))
    unheld = new_session(owner)
    told(redis)

    first = owner_api.delete(f"{API}/sessions/{held.pk}")
    second = owner_api.delete(f"{API}/sessions/{unheld.pk}")

    # No host removed them yet: gone for the user, still being deleted.
    assert (first.status_code, second.status_code) == (202, 202)
    assert owner_api.get(f"{API}/sessions/{held.pk}").status_code == 404
    assert owner_api.delete(f"{API}/sessions/{held.pk}").status_code == 404
    assert owner_api.get(f"{API}/sessions").json() == []
    assert told(redis, TEST_HOST) == [("delete", str(held.pk)), ("delete", str(unheld.pk))]
    unheld.refresh_from_db()
    assert unheld.status == SessionStatus.STOPPED  # no host will start it now
