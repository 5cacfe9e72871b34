"""Every answer under /api/ is JSON, with CSRF checks enforced as in production."""

import pytest
from django.test import Client, RequestFactory

from core.errors import csrf_failure

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser():
    return Client(enforce_csrf_checks=True)


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["/api/nothing-here", "/api/v1/nothing-here", "/api"])
def test_an_unsafe_method_on_an_unknown_api_route_is_a_json_404(browser, method, path):
    response = getattr(browser, method)(path, data="{}", content_type="application/json")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_a_session_post_without_a_csrf_token_is_a_json_403(browser, owner):
    browser.force_login(owner)

    response = browser.post("/api/v1/agents", data="{}", content_type="application/json")

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert "CSRF" in response.json()["detail"]


def test_the_csrf_failure_view_answers_json_under_api_and_html_elsewhere(settings):
    assert settings.CSRF_FAILURE_VIEW == "core.errors.csrf_failure"
    factory = RequestFactory()

    api = csrf_failure(factory.post("/api/v1/agents"), reason="CSRF cookie not set.")
    page = csrf_failure(factory.post("/login/"), reason="CSRF cookie not set.")

    assert (api.status_code, api["Content-Type"]) == (403, "application/json")
    assert b'"code": "csrf_failed"' in api.content
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")


def test_a_page_form_without_a_csrf_token_still_gets_the_html_403(browser):
    response = browser.post("/login/", {"username": "x", "password": "y"})

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/html")
