"""Dashboard pages of accounts: log in and out, API keys shown once, revoked, and an outsider's
404."""

import pytest
from django.urls import reverse

from accounts import services
from accounts.models import ApiKey
from accounts.tests.helpers import PASSWORD
from core.errors import Unauthenticated

pytestmark = pytest.mark.django_db


@pytest.fixture
def page(client, owner):
    client.force_login(owner)
    return client


def test_login_page_logs_in_with_username_and_goes_to_next(client, owner):
    response = client.post(
        reverse("login"), {"username": "owner", "password": PASSWORD, "next": "/agents/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/agents/"
    assert client.get(reverse("overview")).status_code == 200


def test_login_page_accepts_the_email_too(client, owner):
    response = client.post(
        reverse("login"), {"username": "OWNER@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("overview")


def test_login_page_refuses_a_wrong_password_with_a_message(client, owner):
    response = client.post(reverse("login"), {"username": "owner", "password": "wrong-password"})
    assert response.status_code == 200
    assert "Wrong username, email or password." in response.content.decode()
    assert client.get(reverse("overview")).status_code == 302


def test_logout_is_a_post_and_ends_the_session(page):
    assert page.get(reverse("logout")).status_code == 405
    response = page.post(reverse("logout"))
    assert response.status_code == 302
    assert response["Location"] == reverse("login")
    assert page.get(reverse("overview"))["Location"].startswith(reverse("login"))


def test_admin_keeps_its_own_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_api_keys_page_wants_a_login(client):
    response = client.get(reverse("api-keys"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={reverse('api-keys')}"


def test_a_new_key_is_shown_once_and_works(page, owner):
    response = page.post(reverse("api-keys"), {"name": "ci-deploy"})
    assert response.status_code == 302
    key = ApiKey.objects.get(user=owner, name="ci-deploy")

    shown = page.get(reverse("api-keys")).content.decode()
    start = shown.index(f"aimos_{key.key_prefix}_")
    raw = shown[start : start + len("aimos_") + 16 + 1 + 64]
    assert services.authenticate_api_key(raw).pk == key.pk
    assert "shown only this once" in shown

    again = page.get(reverse("api-keys")).content.decode()
    assert raw not in again
    assert "shown only this once" not in again
    assert "ci-deploy" in again
    assert ApiKey.objects.filter(user=owner).count() == 1


def test_a_key_needs_a_name_and_a_future_expiry(page, owner):
    assert page.post(reverse("api-keys"), {"name": ""}).status_code == 400
    response = page.post(reverse("api-keys"), {"name": "old", "expires_at": "2001-01-01T10:00"})
    assert response.status_code == 400
    assert "Must be in the future." in response.content.decode()
    assert not ApiKey.objects.filter(user=owner).exists()


def test_revoking_a_key_from_the_page_stops_it(page, owner):
    key, raw = services.create_api_key(owner, name="old")
    response = page.post(reverse("api-key-revoke", args=[key.pk]), follow=True)
    assert "is revoked" in response.content.decode()
    with pytest.raises(Unauthenticated):
        services.authenticate_api_key(raw)
    assert page.get(reverse("api-key-revoke", args=[key.pk])).status_code == 405


def test_another_users_key_cannot_be_revoked_nor_seen(client, owner, other):
    key, raw = services.create_api_key(owner, name="owners-key")
    client.force_login(other)
    assert client.post(reverse("api-key-revoke", args=[key.pk])).status_code == 404
    assert "owners-key" not in client.get(reverse("api-keys")).content.decode()
    assert services.authenticate_api_key(raw).pk == key.pk


def test_login_page_attempts_are_throttled_per_address(client, owner, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "auth": "2/min"}
    for _ in range(2):
        client.post(reverse("login"), {"username": "owner", "password": "wrong-password"})
    response = client.post(reverse("login"), {"username": "owner", "password": PASSWORD})
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "Too many attempts. Try again in" in response.content.decode()
    assert client.get(reverse("overview")).status_code == 302  # not logged in
