"""Bearer tokens that must not authenticate: each is a 401 with a challenge."""

import base64
import json
import time
import uuid

import jwt
import pytest
from django.conf import settings

from accounts.tests.helpers import LOGOUT, ME, REFRESH, bearer

pytestmark = pytest.mark.django_db


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(user, **overrides) -> dict:
    now = int(time.time())
    return {
        "token_type": "access",
        "exp": now + 600,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "user_id": str(user.pk),
        **overrides,
    }


def assert_refused(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json()) == {"detail", "code", "errors"}


def test_a_token_signed_with_our_key_is_accepted(api, owner):
    """The control for the tests below: a well-formed token we sign ourselves works."""
    token = jwt.encode(claims(owner), settings.SECRET_KEY, algorithm="HS256")

    response = api.get(ME, **bearer(token))

    assert response.status_code == 200
    assert response.json()["username"] == "owner"


def test_a_token_with_alg_none_is_refused(api, owner):
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(owner))}."

    assert_refused(api.get(ME, **bearer(token)))


def test_a_token_whose_payload_was_changed_is_refused(api, owner, other, login):
    header, _, signature = login("other")["access_token"].split(".")
    forged = f"{header}.{b64(claims(owner))}.{signature}"

    assert_refused(api.get(ME, **bearer(forged)))


def test_a_token_signed_with_another_key_is_refused(api, owner):
    token = jwt.encode(claims(owner), "not-our-secret-key-" * 3, algorithm="HS256")

    assert_refused(api.get(ME, **bearer(token)))


def test_an_expired_token_is_refused(api, owner):
    past = int(time.time()) - 3600
    token = jwt.encode(
        claims(owner, iat=past - 600, exp=past), settings.SECRET_KEY, algorithm="HS256"
    )

    assert_refused(api.get(ME, **bearer(token)))


def test_a_refresh_token_is_not_an_access_token(api, owner, login):
    tokens = login("owner")

    assert_refused(api.get(ME, **bearer(tokens["refresh_token"])))


def test_a_rotated_refresh_token_reused_is_refused(api, owner, login):
    tokens = login("owner")
    api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json")

    assert_refused(api.post(REFRESH, {"refresh_token": tokens["refresh_token"]}, format="json"))


def test_an_access_token_used_to_log_out_is_refused_afterwards(api, owner, login):
    tokens = login("owner")
    logout = api.post(
        LOGOUT,
        {"refresh_token": tokens["refresh_token"]},
        format="json",
        **bearer(tokens["access_token"]),
    )
    assert logout.status_code == 204

    response = api.get(ME, **bearer(tokens["access_token"]))

    assert_refused(response)
    assert response.json()["code"] == "token_revoked"


def test_a_token_of_a_deleted_user_is_refused(api, owner, login):
    tokens = login("owner")
    owner.delete()

    assert_refused(api.get(ME, **bearer(tokens["access_token"])))


def test_a_token_of_a_deactivated_user_is_refused(api, owner, login):
    tokens = login("owner")
    owner.is_active = False
    owner.save()

    assert_refused(api.get(ME, **bearer(tokens["access_token"])))


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer not-a-jwt"])
def test_a_malformed_authorization_header_is_refused(api, owner, header):
    response = api.get(ME, HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
