"""/metrics without AIMOS_METRICS_TOKEN answers loopback clients and staff only."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_token(settings):
    settings.AIMOS_METRICS_TOKEN = ""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}
    return settings


def test_a_remote_client_is_refused_without_a_token(no_token):
    response = Client(REMOTE_ADDR="203.0.113.7").get("/metrics")

    assert response.status_code == 403
    assert b"aimos_" not in response.content


@pytest.mark.parametrize("address", ["127.0.0.1", "127.5.6.7", "::1"])
def test_a_loopback_client_gets_the_metrics(no_token, address):
    response = Client(REMOTE_ADDR=address).get("/metrics")

    assert response.status_code == 200
    assert b"aimos_" in response.content


def test_staff_signed_in_get_the_metrics_from_anywhere(no_token, admin):
    client = Client(REMOTE_ADDR="203.0.113.7")
    client.force_login(admin)

    assert client.get("/metrics").status_code == 200


def test_a_signed_in_non_staff_user_is_refused(no_token, owner):
    client = Client(REMOTE_ADDR="203.0.113.7")
    client.force_login(owner)

    assert client.get("/metrics").status_code == 403


def test_a_forged_forwarded_for_does_not_make_a_remote_client_local(no_token):
    client = Client(REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="127.0.0.1")

    assert client.get("/metrics").status_code == 403


def test_behind_one_proxy_the_forwarded_address_is_the_client(no_token):
    no_token.REST_FRAMEWORK = {**no_token.REST_FRAMEWORK, "NUM_PROXIES": 1}
    local = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="127.0.0.1")
    remote = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert local.get("/metrics").status_code == 200
    assert remote.get("/metrics").status_code == 403


def test_the_token_lets_a_remote_scraper_in(settings):
    settings.AIMOS_METRICS_TOKEN = "scrape-token-1234"
    client = Client(REMOTE_ADDR="203.0.113.7")

    assert client.get("/metrics").status_code == 401
    right = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-1234")
    assert right.status_code == 200
    assert b"aimos_" in right.content
