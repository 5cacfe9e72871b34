"""The admin: sessions are readable; they are stopped and deleted through the services."""

import django_rq
import pytest

from workspaces import commands
from workspaces.choices import SessionStatus
from workspaces.models import Session
from workspaces.tests.daemons import TEST_HOST, activate, new_session

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/workspaces/session/"


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


@pytest.fixture
def redis():
    connection = django_rq.get_connection("default")
    keys = [commands.SHARED, commands.OWN.format(TEST_HOST)]
    connection.delete(*keys)
    yield connection
    connection.delete(*keys)


def test_the_session_pages_load_read_only(admin_client, owner):
    session = new_session(owner)

    listing = admin_client.get(CHANGELIST)
    page = admin_client.get(f"{CHANGELIST}{session.pk}/change/")

    assert listing.status_code == 200
    assert str(session.pk) in listing.content.decode()
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.get(f"{CHANGELIST}?status__exact=starting").status_code == 200


def test_the_stop_action_stops_through_the_service(admin_client, owner, redis):
    unclaimed, held = new_session(owner), activate(new_session(owner))

    response = admin_client.post(
        CHANGELIST,
        {"action": "stop_sessions", "_selected_action": [unclaimed.pk, held.pk]},
        follow=True,
    )

    assert response.status_code == 200
    unclaimed.refresh_from_db()
    assert unclaimed.status == SessionStatus.STOPPED
    assert commands.receive(redis, TEST_HOST, 1) == commands.Command("stop", str(held.pk))


def test_the_delete_action_deletes_through_the_service(admin_client, owner, redis):
    session = new_session(owner)

    response = admin_client.post(
        CHANGELIST, {"action": "delete_sessions", "_selected_action": [session.pk]}, follow=True
    )

    assert response.status_code == 200
    session.refresh_from_db()
    assert session.deleting
    assert ("delete", str(session.pk)) in [
        (c.op, c.session_id) for c in iter(lambda: commands.receive(redis, "nobody", 0.01), None)
    ]


def test_rows_are_never_deleted_alone(admin_client, owner):
    session = new_session(owner)

    response = admin_client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [session.pk]}
    )

    assert Session.objects.filter(pk=session.pk, deleting=False).exists()
    assert response.status_code in (200, 302)
