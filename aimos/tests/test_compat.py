"""The reference guide's clients work unchanged against /api/ (without v1)."""

from urllib.parse import urlencode

import pytest
import requests
from django.conf import settings

PASSWORD = "correct-horse-battery"


class ReferenceClient:
    """The Python client of the reference API guide, as printed there (the parts we call)."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.token = None

    def login(self, username: str, password: str):
        response = self.session.post(
            f"{self.base_url}/auth/login", data={"username": username, "password": password}
        )
        response.raise_for_status()
        data = response.json()
        self.token = data["access_token"]
        self.session.headers.update({"Authorization": f"Bearer {self.token}"})
        return data


@pytest.mark.django_db(transaction=True)
def test_the_reference_python_client_logs_in_with_form_data(live_server, owner):
    client = ReferenceClient(f"{live_server.url}/api")

    data = client.login("owner", PASSWORD)

    assert data["token_type"] == "bearer"
    assert data["expires_in"] == settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    me = client.session.get(f"{live_server.url}/api/auth/me")
    assert me.status_code == 200
    assert me.json()["username"] == "owner"
    assert me.json()["is_admin"] is False


@pytest.mark.django_db
def test_the_reference_register_then_login_flow_works_under_api(api):
    registered = api.post(
        "/api/auth/register",
        {"username": "john_doe", "email": "john@example.com", "password": "secure_password123"},
        format="json",
    )
    assert registered.status_code == 201

    response = api.post(
        "/api/auth/login",
        urlencode({"username": "john_doe", "password": "secure_password123"}),
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert set(response.json()) >= {"access_token", "token_type", "expires_in"}
