"""Rates per user (admins get more), per anonymous IP, and per IP on login/registration."""

import time

import pytest

from accounts.tests.helpers import KEYS, LOGIN, ME, PASSWORD, REFRESH, REGISTER, api_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    """Set some rates for one test; the others keep their configured values."""

    def set_rates(**changes):
        settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, **changes}

    return set_rates


def rate_headers(response) -> tuple[int, int, int]:
    return (
        int(response["X-RateLimit-Limit"]),
        int(response["X-RateLimit-Remaining"]),
        int(response["X-RateLimit-Reset"]),
    )


def test_every_counted_response_says_where_the_client_stands(owner_api, rates):
    rates(user="5/min")
    before = time.time()

    first, second = owner_api.get(ME), owner_api.get(ME)

    limit, remaining, reset = rate_headers(first)
    assert (limit, remaining) == (5, 4)
    assert before + 59 <= reset <= time.time() + 61
    assert rate_headers(second)[:2] == (5, 3)


def test_error_responses_carry_the_headers_too(owner_api, rates):
    rates(user="5/min")

    response = owner_api.delete(f"{KEYS}/00000000-0000-0000-0000-000000000000")

    assert response.status_code == 404
    assert rate_headers(response)[:2] == (5, 4)


def test_a_user_over_the_rate_gets_429_with_retry_after(owner_api, rates):
    rates(user="3/min")
    for _ in range(3):
        assert owner_api.get(ME).status_code == 200

    response = owner_api.get(ME)

    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 60
    body = response.json()
    assert body["code"] == "throttled"
    assert body["retry_after"] == retry_after
    assert rate_headers(response)[:2] == (3, 0)


def test_the_user_rate_is_counted_per_user(owner_api, other_api, rates):
    rates(user="2/min")
    for _ in range(2):
        owner_api.get(ME)
    assert owner_api.get(ME).status_code == 429

    assert other_api.get(ME).status_code == 200


def test_requests_with_an_api_key_count_for_its_owner(api, owner, owner_api, create_key, rates):
    key = create_key(owner)["key"]
    rates(user="2/min")
    for _ in range(2):
        owner_api.get(ME)

    assert api.get(ME, **api_key(key)).status_code == 429


def test_admins_get_the_admin_rate(admin_api, owner_api, rates):
    rates(user="2/min", admin="4/min")

    assert rate_headers(admin_api.get(ME))[0] == 4
    assert rate_headers(owner_api.get(ME))[0] == 2
    for _ in range(3):
        assert admin_api.get(ME).status_code == 200
    assert admin_api.get(ME).status_code == 429


def test_anonymous_requests_get_the_anon_rate_per_ip(api, rates):
    rates(anon="2/min")
    for _ in range(2):
        response = api.post(REFRESH, {"refresh_token": "x"}, format="json")
        assert response.status_code == 401
        assert rate_headers(response)[0] == 2

    assert api.post(REFRESH, {"refresh_token": "x"}, format="json").status_code == 429
    elsewhere = api.post(REFRESH, {"refresh_token": "x"}, format="json", REMOTE_ADDR="10.1.1.1")
    assert elsewhere.status_code == 401


def test_login_attempts_are_limited_per_ip_whatever_the_username(api, owner, other, rates):
    rates(auth="2/min", anon="100/min")
    api.post(LOGIN, {"username": "owner", "password": "wrong"}, format="json")
    api.post(LOGIN, {"username": "other", "password": "wrong"}, format="json")

    response = api.post(LOGIN, {"username": "owner", "password": PASSWORD}, format="json")

    assert response.status_code == 429
    assert response["Retry-After"]
    assert rate_headers(response)[:2] == (2, 0)


def test_a_forged_forwarded_for_header_does_not_reset_the_login_limit(api, owner, rates):
    rates(auth="1/min", anon="100/min")
    api.post(LOGIN, {"username": "owner", "password": "wrong"}, format="json")

    response = api.post(
        LOGIN,
        {"username": "owner", "password": PASSWORD},
        format="json",
        HTTP_X_FORWARDED_FOR="203.0.113.9",
    )

    assert response.status_code == 429


def test_another_ip_has_its_own_login_limit(api, owner, rates):
    rates(auth="1/min", anon="100/min")
    api.post(LOGIN, {"username": "owner", "password": "wrong"}, format="json")

    response = api.post(
        LOGIN, {"username": "owner", "password": PASSWORD}, format="json", REMOTE_ADDR="10.9.9.9"
    )

    assert response.status_code == 200


def test_registration_shares_the_auth_limit(api, rates):
    rates(auth="1/min", anon="100/min")
    api.post(LOGIN, {"username": "nobody", "password": "wrong"}, format="json")

    response = api.post(
        REGISTER,
        {"username": "newbie", "email": "newbie@example.com", "password": "secure_password123"},
        format="json",
    )

    assert response.status_code == 429


def test_the_tightest_limit_is_the_one_reported(api, owner, rates):
    rates(auth="3/min", anon="50/min")

    response = api.post(LOGIN, {"username": "owner", "password": PASSWORD}, format="json")

    assert rate_headers(response)[:2] == (3, 2)


def test_unthrottled_endpoints_carry_no_rate_headers(api):
    response = api.get("/api/v1/health")

    assert "X-RateLimit-Limit" not in response
