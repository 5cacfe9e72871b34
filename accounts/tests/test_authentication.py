"""Which credential counts: X-API-Key, then Bearer, then the session cookie (with CSRF)."""

import pytest
from rest_framework.test import APIClient

from accounts.tests.helpers import KEYS, ME, api_key, bearer

pytestmark = pytest.mark.django_db


def test_an_api_key_wins_over_a_bearer_token(api, owner, other, create_key, login):
    key = create_key(owner)["key"]
    token = login("other")["access_token"]

    response = api.get(ME, **api_key(key), **bearer(token))

    assert response.json()["username"] == "owner"


def test_a_bad_api_key_is_refused_even_with_a_good_bearer_token(api, owner, login):
    token = login("owner")["access_token"]

    response = api.get(ME, **api_key("aimos_0123456789abcdef_nope"), **bearer(token))

    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key"


def test_a_bearer_token_wins_over_a_session(owner, other, login):
    client = APIClient()
    client.force_login(other)
    token = login("owner")["access_token"]

    response = client.get(ME, **bearer(token))

    assert response.json()["username"] == "owner"


def test_a_session_authenticates_reads(owner):
    client = APIClient()
    client.force_login(owner)

    assert client.get(ME).json()["username"] == "owner"


def test_a_session_write_without_a_csrf_token_is_refused(owner):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner)

    response = client.post(KEYS, {"name": "from the dashboard"}, format="json")

    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert client.get(KEYS).json() == []


def test_a_session_write_with_the_csrf_token_is_accepted(owner):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner)
    client.get("/admin/login/")  # any page that sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(
        KEYS, {"name": "from the dashboard"}, format="json", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 201


def test_an_api_key_write_needs_no_csrf_token(owner, create_key):
    client = APIClient(enforce_csrf_checks=True)
    key = create_key(owner)["key"]

    response = client.post(KEYS, {"name": "second"}, format="json", **api_key(key))

    assert response.status_code == 201


def test_without_credentials_a_protected_endpoint_is_a_401_not_a_403(api):
    response = api.post(KEYS, {"name": "x"}, format="json")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.json() == {
        "detail": "Authentication credentials were not provided.",
        "code": "not_authenticated",
        "errors": [],
    }
