"""Login, refresh, logout and the current user, through the API."""

from urllib.parse import urlencode

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.tests.helpers import LOGIN, LOGOUT, ME, PASSWORD, REFRESH, bearer

pytestmark = pytest.mark.django_db


def test_login_with_json_returns_a_bearer_token_pair(api, owner):
    response = api.post(LOGIN, {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    me = api.get(ME, **bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["username"] == "owner"


def test_login_with_form_data_works(api, owner):
    response = api.post(
        LOGIN,
        urlencode({"username": "owner", "password": PASSWORD}),
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert response.json()["access_token"]


def test_login_accepts_an_email_in_the_username_field(api, owner):
    response = api.post(
        LOGIN, {"username": "OWNER@example.com", "password": PASSWORD}, format="json"
    )

    assert response.status_code == 200


def test_login_accepts_an_email_field(api, owner):
    response = api.post(LOGIN, {"email": "owner@example.com", "password": PASSWORD}, format="json")

    assert response.status_code == 200


def test_login_records_the_last_login(api, owner):
    assert owner.last_login is None

    api.post(LOGIN, {"username": "owner", "password": PASSWORD}, format="json")

    owner.refresh_from_db()
    assert owner.last_login is not None


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "owner", "password": "wrong-password"},
        {"username": "nobody", "password": PASSWORD},
        {"username": "owner@example.com", "password": "wrong-password"},
    ],
)
def test_login_with_bad_credentials_is_a_401_with_a_challenge(api, owner, credentials):
    response = api.post(LOGIN, credentials, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {
        "detail": "Invalid username or password",
        "code": "invalid_credentials",
        "errors": [],
    }


def test_an_inactive_user_cannot_log_in(api, owner):
    owner.is_active = False
    owner.save()

    response = api.post(LOGIN, {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 401


def test_login_without_a_username_is_a_400(api):
    response = api.post(LOGIN, {"password": PASSWORD}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "username"


def test_refresh_issues_a_new_pair_that_works(api, owner, login):
    tokens = login("owner")

    response = api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")

    assert response.status_code == 200
    fresh = response.json()
    assert fresh["token_type"] == "bearer"
    assert fresh["refresh_token"] != tokens["refresh_token"]
    assert api.get(ME, **bearer(fresh["access_token"])).status_code == 200
    again = api.post(REFRESH, {"refresh_token": fresh["refresh_token"]}, format="json")
    assert again.status_code == 200


def test_a_rotated_refresh_token_cannot_be_used_again(api, owner, login):
    tokens = login("owner")
    first = api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")
    assert first.status_code == 200

    reuse = api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")

    assert reuse.status_code == 401
    assert reuse.json()["code"] == "token_not_valid"
    assert reuse["WWW-Authenticate"].startswith("Bearer")


def test_an_access_token_is_not_a_refresh_token(api, owner, login):
    tokens = login("owner")

    response = api.post(REFRESH, {"refresh_token": tokens["access_token"]}, format="json")

    assert response.status_code == 401


def test_refresh_of_a_deactivated_user_is_refused(api, owner, login):
    tokens = login("owner")
    owner.is_active = False
    owner.save()

    response = api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")

    assert response.status_code == 401


def test_logout_blacklists_the_refresh_token_and_revokes_the_access_token(api, owner, login):
    tokens = login("owner")

    response = api.post(
        LOGOUT,
        {"refresh_token": tokens["refresh_token"]},
        format="json",
        **bearer(tokens["access_token"]),
    )

    assert response.status_code == 204
    assert api.get(ME, **bearer(tokens["access_token"])).status_code == 401
    refresh = api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")
    assert refresh.status_code == 401


def test_logout_ends_only_that_login(api, owner, login):
    laptop, phone = login("owner"), login("owner")

    api.post(
        LOGOUT,
        {"refresh_token": laptop["refresh_token"]},
        format="json",
        **bearer(laptop["access_token"]),
    )

    assert api.get(ME, **bearer(phone["access_token"])).status_code == 200
    refresh = api.post(REFRESH, {"refresh_token": phone["refresh_token"]}, format="json")
    assert refresh.status_code == 200


def test_logout_refuses_someone_elses_refresh_token(api, owner, other, login):
    mine, theirs = login("owner"), login("other")

    response = api.post(
        LOGOUT,
        {"refresh_token": theirs["refresh_token"]},
        format="json",
        **bearer(mine["access_token"]),
    )

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "refresh_token"
    refresh = api.post(REFRESH, {"refresh_token": theirs["refresh_token"]}, format="json")
    assert refresh.status_code == 200


def test_logout_needs_authentication(api, owner, login):
    tokens = login("owner")

    response = api.post(LOGOUT, {"refresh_token": tokens["refresh_token"]}, format="json")

    assert response.status_code == 401


def test_logout_of_a_session_ends_the_session(owner):
    client = APIClient()
    client.force_login(owner)
    assert client.get(ME).status_code == 200

    response = client.post(LOGOUT, {}, format="json")

    assert response.status_code == 204
    assert client.get(ME).status_code == 401


def test_me_describes_the_authenticated_user(owner_api, owner):
    response = owner_api.get(ME)

    assert response.status_code == 200
    assert response.json() == {
        "id": str(owner.pk),
        "username": "owner",
        "email": "owner@example.com",
        "full_name": "Olive Owner",
        "is_active": True,
        "is_admin": False,
        "created_at": response.json()["created_at"],
        "last_login": None,
    }
    assert response.json()["created_at"].startswith(str(owner.date_joined.date()))


def test_me_says_an_admin_is_an_admin(admin_api):
    assert admin_api.get(ME).json()["is_admin"] is True


def test_me_without_credentials_is_a_401_with_a_challenge(api):
    response = api.get(ME)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json()["code"] == "not_authenticated"


def test_auth_paths_accept_a_trailing_slash(api, owner):
    response = api.post(LOGIN + "/", {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 200
