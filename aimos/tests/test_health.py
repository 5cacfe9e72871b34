"""GET /health and /api/v1/health: 200 when the database and Redis answer, else 503."""

import socket

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/health", "/api/v1/health", "/api/health"])
def test_health_is_200_with_its_checks_when_all_is_up(api, path):
    response = api.get(path)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"database": "ok", "redis": "ok"}
    assert body["version"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("path", ["/health", "/api/v1/health"])
def test_health_is_503_naming_redis_when_redis_is_down(api, settings, path):
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    response = api.get(path)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error")


def test_health_needs_no_credentials_and_ignores_bad_ones(api):
    response = api.get("/api/v1/health", HTTP_X_API_KEY="aimos_bad", HTTP_AUTHORIZATION="Bearer x")

    assert response.status_code == 200
