"""POST auth/register: a public endpoint creating ordinary users."""

from urllib.parse import urlencode

import pytest

from accounts.models import User
from accounts.tests.helpers import REGISTER, bearer

pytestmark = pytest.mark.django_db

NEW_USER = {
    "username": "john_doe",
    "email": "john@example.com",
    "password": "secure_password123",
    "full_name": "John Doe",
}


def field_messages(body: dict, field: str) -> list[str]:
    return [error["message"] for error in body["errors"] if error["field"] == field]


def test_register_returns_the_new_user_without_the_password(api):
    response = api.post(REGISTER, NEW_USER, format="json")

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "id",
        "username",
        "email",
        "full_name",
        "is_active",
        "is_admin",
        "created_at",
        "last_login",
    }
    assert body["username"] == "john_doe"
    assert body["email"] == "john@example.com"
    assert body["is_active"] is True
    assert body["is_admin"] is False
    assert body["last_login"] is None
    user = User.objects.get(pk=body["id"])
    assert user.check_password("secure_password123")
    assert not user.is_staff


def test_register_accepts_form_data_as_the_reference_clients_send(api):
    data = {key: NEW_USER[key] for key in ("username", "email", "password")}
    response = api.post(REGISTER, urlencode(data), content_type="application/x-www-form-urlencoded")

    assert response.status_code == 201
    assert User.objects.filter(username="john_doe").exists()


def test_register_refuses_a_taken_username_whatever_its_case(api, owner):
    response = api.post(REGISTER, {**NEW_USER, "username": "OWNER"}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert field_messages(body, "username") == ["A user with that username already exists."]
    assert not User.objects.filter(username="OWNER").exists()


def test_register_refuses_a_taken_email(api, owner):
    response = api.post(REGISTER, {**NEW_USER, "email": "Owner@Example.com"}, format="json")

    assert response.status_code == 400
    assert field_messages(response.json(), "email") == ["A user with that email already exists."]


def test_register_applies_the_password_validators(api):
    response = api.post(REGISTER, {**NEW_USER, "password": "12345678"}, format="json")

    assert response.status_code == 400
    messages = field_messages(response.json(), "password")
    assert "This password is too common." in messages
    assert "This password is entirely numeric." in messages
    assert not User.objects.filter(username="john_doe").exists()


def test_register_refuses_a_password_like_the_username(api):
    response = api.post(
        REGISTER, {**NEW_USER, "username": "marmalade42", "password": "marmalade42"}, format="json"
    )

    assert response.status_code == 400
    assert field_messages(response.json(), "password") == [
        "The password is too similar to the username."
    ]


def test_register_lists_every_missing_field(api):
    response = api.post(REGISTER, {}, format="json")

    assert response.status_code == 400
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"username", "email", "password"}


def test_register_refuses_an_invalid_email_and_username(api):
    response = api.post(
        REGISTER, {**NEW_USER, "username": "no spaces", "email": "not-an-email"}, format="json"
    )

    assert response.status_code == 400
    fields = {error["field"] for error in response.json()["errors"]}
    assert fields == {"username", "email"}


def test_register_ignores_a_stale_token_sent_along(api):
    response = api.post(REGISTER, NEW_USER, format="json", **bearer("stale.garbage.token"))

    assert response.status_code == 201


def test_register_cannot_make_an_admin(api):
    response = api.post(REGISTER, {**NEW_USER, "is_staff": True, "is_admin": True}, format="json")

    assert response.status_code == 201
    assert response.json()["is_admin"] is False
    assert not User.objects.get(username="john_doe").is_staff
