"""Another user's session does not exist for an outsider: every session endpoint, canonical or
Crogia's, answers 404 and changes nothing — while its owner is answered."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from workspaces.models import Session
from workspaces.tests.daemons import TEST_HOST

pytestmark = pytest.mark.django_db

SSE = {"HTTP_ACCEPT": "text/event-stream"}

# (method, path under the session, body, extra headers)
OPERATIONS = [
    ("get", "", None, {}),
    ("get", "/files?path=", None, {}),
    ("get", "/files/content?path=a.txt", None, {}),
    ("get", "/files/content?path=a.txt&raw=1", None, {}),
    ("post", "/files/content", {"path": "b.txt", "content": "x"}, {}),
    ("get", "/files/download?path=a.txt", None, {}),
    ("post", "/search/files", {"pattern": "*"}, {}),
    ("post", "/search/grep", {"pattern": "x"}, {}),
    ("post", "/shell", {"command": "touch pwned"}, {}),
    ("post", "/shell", {"command": "touch pwned"}, SSE),
    ("get", "/processes", None, {}),
    ("post", "/processes", {"command": "touch pwned"}, {}),
    ("post", "/processes/{pid}/stop", None, {}),
    ("get", "/processes/{pid}/logs", None, {}),
    ("get", "/processes/{pid}/logs?follow=true", None, {}),
    ("delete", "/files?path=a.txt", None, {}),
    ("post", "/stop", None, {}),
    ("post", "/start", None, {}),
    ("delete", "", None, {}),
]
UPLOAD = ("post", "/files/upload")


def call(client, method, url, body, headers):
    if body is None:
        return getattr(client, method)(url, **headers)
    return getattr(client, method)(url, body, format="json", **headers)


@pytest.fixture
def pid(owner_api, active_session, daemon):
    response = owner_api.post(
        f"/api/v1/sessions/{active_session.pk}/processes", {"command": "sleep 600"}, format="json"
    )
    assert response.status_code == 201
    return response.json()["pid"]


@pytest.mark.parametrize("base", ["/api/v1/sessions", "/api/sessions"])
def test_every_session_endpoint_answers_404_to_an_outsider(
    other_api, owner_api, active_session, daemon, pid, base
):
    (daemon.workspace / "a.txt").write_text("the owner's")
    before = Session.objects.values().get(pk=active_session.pk)

    wrong = []
    for method, rest, body, headers in OPERATIONS:
        url = f"{base}/{active_session.pk}{rest}".replace("{pid}", str(pid))
        response = call(other_api, method, url, body, headers)
        if response.status_code != 404 or response.json()["code"] != "not_found":
            wrong.append(f"{method} {url}: {response.status_code}")
    upload = SimpleUploadedFile("u.txt", b"x")
    response = other_api.post(
        f"{base}/{active_session.pk}/files/upload", {"file": upload}, format="multipart"
    )
    if response.status_code != 404:
        wrong.append(f"upload: {response.status_code}")

    assert wrong == []
    assert Session.objects.values().get(pk=active_session.pk) == before
    assert sorted(p.name for p in daemon.workspace.iterdir()) == ["a.txt"]
    listed = owner_api.get(f"{base}/{active_session.pk}/processes").json()
    assert [p["status"] for p in listed] == ["running"]
    assert other_api.get(base).json() == []


def test_the_owner_and_an_admin_are_answered(owner_api, admin_api, active_session, daemon):
    (daemon.workspace / "a.txt").write_text("hello")

    for client in (owner_api, admin_api):
        for base in ("/api/v1/sessions", "/api/sessions"):
            response = client.get(f"{base}/{active_session.pk}/files/content?path=a.txt")
            assert response.status_code == 200
            assert response.json()["content"] == "hello"


def test_a_session_being_deleted_is_a_404_even_for_its_owner(owner_api, active_session, daemon):
    Session.mark_deleting(active_session.pk)

    assert owner_api.get(f"/api/v1/sessions/{active_session.pk}/files").status_code == 404
    assert Session.mark_stopped(active_session.pk, host=TEST_HOST)
