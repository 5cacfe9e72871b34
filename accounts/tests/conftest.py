"""Fixtures for accounts tests: log in and create keys through the API."""

import pytest
from rest_framework.test import APIClient

from accounts.tests.helpers import KEYS, LOGIN, PASSWORD


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """The production hasher costs most of a second per password; these tests are not about it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def login():
    """Log a user in through POST auth/login; returns the JSON body (the token pair)."""

    def do(username: str, password: str = PASSWORD) -> dict:
        response = APIClient().post(
            LOGIN, {"username": username, "password": password}, format="json"
        )
        assert response.status_code == 200, response.content
        return response.json()

    return do


@pytest.fixture
def create_key():
    """Create an API key through POST api-keys as `user`; returns the JSON body."""

    def do(user, name: str = "ci", **extra) -> dict:
        client = APIClient()
        client.force_authenticate(user)
        response = client.post(KEYS, {"name": name, **extra}, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    return do
