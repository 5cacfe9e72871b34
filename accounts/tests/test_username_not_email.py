"""A username may not look like an email address, so nobody can shadow another person's
email login; login by an email always means that email."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.helpers import LOGIN, PASSWORD, REGISTER

pytestmark = pytest.mark.django_db


def test_register_refuses_a_username_that_looks_like_an_email(api, owner):
    response = api.post(
        REGISTER,
        {"username": "owner@example.com", "email": "mallory@example.com", "password": PASSWORD},
        format="json",
    )

    assert response.status_code == 400
    fields = {error["field"]: error["message"] for error in response.json()["errors"]}
    assert "email address" in fields["username"]
    assert not User.objects.filter(email="mallory@example.com").exists()


def test_the_admin_refuses_a_username_that_looks_like_an_email(admin):
    operator = Client()
    operator.force_login(admin)

    response = operator.post(
        "/admin/accounts/user/add/",
        {
            "username": "victim@example.com",
            "email": "mallory@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "usable_password": "true",
        },
    )

    assert response.status_code == 200  # the form again, with the error
    assert "it would look like an email address" in response.content.decode()
    assert not User.objects.filter(username="victim@example.com").exists()


def test_the_admin_refuses_renaming_a_user_to_an_email(admin, owner):
    operator = Client()
    operator.force_login(admin)
    page = operator.get(f"/admin/accounts/user/{owner.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        username="other@example.com",
        date_joined_0=owner.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=owner.date_joined.strftime("%H:%M:%S"),
        is_active="on",
    )
    data.pop("groups", None)
    data.pop("user_permissions", None)
    data.pop("last_login", None)
    data.pop("date_joined", None)

    response = operator.post(f"/admin/accounts/user/{owner.pk}/change/", data)

    assert response.status_code == 200
    assert "it would look like an email address" in response.content.decode()
    owner.refresh_from_db()
    assert owner.username == "owner"


def test_an_email_login_is_never_shadowed_by_a_username_spelled_like_it(api, owner):
    # A name taken before the rule existed (or written straight to the database).
    User.objects.create_user(
        username="owner@example.com", email="mallory@example.com", password="mallory-pass-123"
    )

    response = api.post(
        LOGIN, {"username": "owner@example.com", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200
    response = api.post(
        LOGIN, {"username": "owner@example.com", "password": "mallory-pass-123"}, format="json"
    )
    assert response.status_code == 401

    page = Client().post(reverse("login"), {"username": "owner@example.com", "password": PASSWORD})
    assert page.status_code == 302
