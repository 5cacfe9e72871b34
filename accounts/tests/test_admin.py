"""The Django admin for users and API keys, used by an operator."""

import pytest
from django.test import Client

from accounts.models import ApiKey, User
from accounts.tests.helpers import ME, api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(admin):
    client = Client()
    client.force_login(admin)
    return client


def test_the_user_list_searches_by_name_and_email(operator, owner, other):
    response = operator.get("/admin/accounts/user/", {"q": "olive"})

    assert response.status_code == 200
    page = response.content.decode()
    assert "owner@example.com" in page
    assert "other@example.com" not in page


def test_the_user_list_filters_admins(operator, owner):
    response = operator.get("/admin/accounts/user/", {"is_staff__exact": "1"})

    page = response.content.decode()
    assert "admin@example.com" in page
    assert "owner@example.com" not in page


def test_the_user_page_edits_the_full_name_and_lists_the_keys(operator, owner, create_key):
    body = create_key(owner, name="laptop")

    response = operator.get(f"/admin/accounts/user/{owner.pk}/change/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="full_name"' in page
    assert 'name="first_name"' not in page
    assert body["key_prefix"] in page
    assert ApiKey.objects.get(pk=body["id"]).hashed_key not in page


def test_an_operator_adds_a_user(operator):
    response = operator.post(
        "/admin/accounts/user/add/",
        {
            "username": "newbie",
            "email": "newbie@example.com",
            "full_name": "New Bie",
            "password1": "secure_password123",
            "password2": "secure_password123",
            "usable_password": "true",
        },
    )

    assert response.status_code == 302
    user = User.objects.get(username="newbie")
    assert user.email == "newbie@example.com"
    assert user.check_password("secure_password123")


def test_the_key_list_shows_prefixes_never_hashes(operator, owner, create_key):
    body = create_key(owner, name="deploy bot")
    row = ApiKey.objects.get(pk=body["id"])

    listing = operator.get("/admin/accounts/apikey/").content.decode()
    detail = operator.get(f"/admin/accounts/apikey/{row.pk}/change/").content.decode()

    assert "deploy bot" in listing
    assert body["key_prefix"] in listing
    for page in (listing, detail):
        assert row.hashed_key not in page
        assert body["key"] not in page
    assert body["key_prefix"] in detail


def test_the_key_list_filters_by_status(operator, owner, owner_api, create_key):
    kept = create_key(owner, name="kept-key")
    gone = create_key(owner, name="gone-key")
    owner_api.delete(f"/api/v1/api-keys/{gone['id']}")

    page = operator.get("/admin/accounts/apikey/", {"status": "revoked"}).content.decode()

    assert "gone-key" in page
    assert kept["key_prefix"] not in page


def test_the_revoke_action_stops_the_keys(api, operator, owner, create_key):
    doomed = create_key(owner, name="doomed")
    spared = create_key(owner, name="spared")

    response = operator.post(
        "/admin/accounts/apikey/",
        {"action": "revoke_keys", "_selected_action": [doomed["id"]]},
    )

    assert response.status_code == 302
    assert api.get(ME, **api_key(doomed["key"])).status_code == 401
    assert api.get(ME, **api_key(spared["key"])).status_code == 200
    assert ApiKey.objects.get(pk=doomed["id"]).revoked_at is not None


def test_an_operator_cannot_add_a_key_in_the_admin(operator):
    assert operator.get("/admin/accounts/apikey/add/").status_code == 403


def test_a_non_staff_user_cannot_open_the_admin(owner):
    client = Client()
    client.force_login(owner)

    response = client.get("/admin/accounts/apikey/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
