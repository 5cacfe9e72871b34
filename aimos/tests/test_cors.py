"""Browsers on a configured origin (CORS_ORIGINS) may call the API and read its headers."""

import pytest

pytestmark = pytest.mark.django_db

ORIGIN = "https://app.example.com"


@pytest.fixture(autouse=True)
def allowed_origin(settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]


def test_a_configured_origin_is_allowed_and_sees_the_paging_and_rate_headers(owner_api):
    response = owner_api.get("/api/v1/api-keys", HTTP_ORIGIN=ORIGIN)

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {
        name.strip().lower() for name in response["Access-Control-Expose-Headers"].split(",")
    }
    assert {"x-total-count", "x-ratelimit-remaining", "retry-after"} <= exposed


def test_a_preflight_from_a_configured_origin_allows_the_auth_headers(api):
    response = api.options(
        "/api/v1/auth/login",
        HTTP_ORIGIN=ORIGIN,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type, x-api-key",
    )

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    allowed = response["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed


def test_another_origin_is_not_allowed(api):
    response = api.get("/api/v1/health", HTTP_ORIGIN="https://evil.example.net")

    assert "Access-Control-Allow-Origin" not in response
