"""Every error under /api/ is JSON of one shape, whatever went wrong."""

import pytest

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login"


def assert_error_shape(response, status: int, code: str):
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"detail", "code", "errors"}
    assert body["code"] == code
    return body


@pytest.mark.parametrize("path", ["/api/v1/no-such-thing", "/api/no-such-thing", "/api/v1/"])
def test_an_unknown_api_route_is_a_json_404(api, path):
    assert_error_shape(api.get(path), 404, "not_found")


def test_a_wrong_method_is_a_json_405(api):
    body = assert_error_shape(api.get(LOGIN), 405, "method_not_allowed")

    assert "GET" in body["detail"]


def test_an_unsupported_content_type_is_a_json_415(api):
    response = api.post(LOGIN, "username=a", content_type="text/plain")

    assert_error_shape(response, 415, "unsupported_media_type")


def test_malformed_json_is_a_json_400(api):
    response = api.post(LOGIN, '{"username": "a", ', content_type="application/json")

    body = assert_error_shape(response, 400, "parse_error")
    assert "JSON" in body["detail"]


def test_validation_errors_name_their_fields(api):
    response = api.post(LOGIN, {"username": "someone"}, format="json")

    body = assert_error_shape(response, 400, "validation_error")
    assert body["errors"] == [{"field": "password", "message": "This field is required."}]


def test_a_body_over_the_servers_limit_is_a_json_413(api, settings):
    body = '{"username": "%s"}' % ("a" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1))
    response = api.post(LOGIN, body, content_type="application/json")

    assert_error_shape(response, 413, "too_large")
