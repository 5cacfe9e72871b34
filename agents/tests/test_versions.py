"""Versions: upload, the background build on each sandbox backend, failures, rebuild, delete."""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from agents import builds, services
from agents.models import Agent, AgentVersion
from agents.tests.packages import agent_files, example_files, pack_files, wheel

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = ["echo", "story", "tools", "counter", "slow", "broken"]


@pytest.fixture(params=["process", "docker"])
def sandbox_backend(request, settings):
    settings.AIMOS_SANDBOX = request.param
    return request.param


@pytest.fixture
def agent(owner):
    return services.create_agent(owner, name="probe")


def upload(client, agent_id, archive: bytes, name="agent.tar.gz"):
    file = SimpleUploadedFile(name, archive, content_type="application/gzip")
    return client.post(f"/api/v1/agents/{agent_id}/versions", {"file": file}, format="multipart")


def stored_files() -> set[Path]:
    root = Path(settings.AIMOS_ARTIFACT_ROOT)
    return {path for path in root.rglob("*")} if root.exists() else set()


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_builds_ready(owner_api, drain_queues, sandbox_backend, example, owner):
    agent = services.create_agent(owner, name=example)
    response = upload(owner_api, agent.pk, pack_files(example_files(example)))
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "queued"
    assert response.json()["version"] == "v1"

    drain_queues()

    version = owner_api.get(f"/api/v1/agents/{agent.pk}/versions/1").json()
    assert version["status"] == "ready", version["build_log"]
    assert f"{sandbox_backend} sandbox" in version["build_log"]
    body = owner_api.get(f"/api/v1/agents/{agent.pk}").json()
    assert body["status"] == "ready"
    assert body["current_version"] == "v1"


@pytest.mark.slow
def test_requirements_are_installed_from_a_local_wheel(
    owner_api, drain_queues, sandbox_backend, agent
):
    wheel_name, wheel_bytes = wheel("aimos_probe_dep", "1.0", "ANSWER = 42\n")
    files = agent_files(
        "import aimos_probe_dep\n\ndef handle(payload):\n    return aimos_probe_dep.ANSWER\n",
        extra="requirements: requirements.txt",
        **{"requirements.txt": f"./vendor/{wheel_name}\n", f"vendor/{wheel_name}": wheel_bytes},
    )
    assert upload(owner_api, agent.pk, pack_files(files)).status_code == 201
    drain_queues()
    version = AgentVersion.objects.get(agent=agent)
    assert version.status == "ready", version.build_log
    assert "aimos_probe_dep" in version.build_log or "aimos-probe-dep" in version.build_log


BROKEN_BUILDS = {
    "syntax error": (agent_files("def handle(payload:\n    return 1\n"), "SyntaxError"),
    "import error": (
        agent_files("import no_such_module_anywhere\n\ndef handle(p):\n    return p\n"),
        "No module named",
    ),
    "missing function": (agent_files("def other(payload):\n    return payload\n"), "handle"),
    "not callable": (agent_files("handle = 42\n"), "not callable"),
    "bad requirement": (
        agent_files(
            "def handle(p):\n    return p\n",
            extra="requirements: requirements.txt",
            **{"requirements.txt": "./vendor/missing-1.0-py3-none-any.whl\n"},
        ),
        "missing-1.0",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BROKEN_BUILDS)
def test_build_failures_end_failed_with_a_readable_log(
    owner_api, drain_queues, sandbox_backend, agent, case
):
    files, expected = BROKEN_BUILDS[case]
    assert upload(owner_api, agent.pk, pack_files(files)).status_code == 201
    drain_queues()
    version = AgentVersion.objects.get(agent=agent)
    assert version.status == "failed"
    assert "Build failed" in version.build_log
    assert expected in version.build_log
    agent.refresh_from_db()
    assert agent.status == "failed"
    assert agent.current_version is None


@pytest.mark.slow
def test_a_failed_new_version_leaves_the_ready_one_current(owner_api, drain_queues, agent):
    upload(
        owner_api,
        agent.pk,
        pack_files(
            example_files("echo") | {"aimos.yaml": "name: probe\nentrypoint: agent.main:handle\n"}
        ),
    )
    drain_queues()
    upload(owner_api, agent.pk, pack_files(agent_files("handle = 42\n")))
    drain_queues()
    agent.refresh_from_db()
    assert agent.status == "ready"
    assert agent.current_version.number == 1
    assert AgentVersion.objects.get(agent=agent, number=2).status == "failed"


@pytest.mark.slow
def test_rebuild_builds_the_same_artifact_again(owner_api, drain_queues, agent):
    upload(owner_api, agent.pk, pack_files(agent_files("def handle(p):\n    return p\n")))
    drain_queues()
    response = owner_api.post(f"/api/v1/agents/{agent.pk}/versions/v1/rebuild")
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert owner_api.post(f"/api/v1/agents/{agent.pk}/versions/1/rebuild").status_code == 409
    drain_queues()
    version = AgentVersion.objects.get(agent=agent)
    assert version.status == "ready"
    assert version.build_log.count("Build succeeded") == 1


def test_two_concurrent_uploads_make_v1_and_v2(owner, agent):
    archive = pack_files(agent_files("def handle(p):\n    return p\n"))
    statuses = []

    def post():
        client = APIClient()
        client.force_authenticate(owner)
        statuses.append(upload(client, agent.pk, archive).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201, 201]
    assert sorted(agent.versions.values_list("number", flat=True)) == [1, 2]


def test_artifact_downloads_the_uploaded_bytes(owner_api, admin_api, agent):
    archive = pack_files(agent_files("def handle(p):\n    return p\n"))
    upload(owner_api, agent.pk, archive)
    response = owner_api.get(f"/api/v1/agents/{agent.pk}/versions/1/artifact")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == archive
    assert admin_api.get(f"/api/v1/agents/{agent.pk}/versions/1/artifact").status_code == 404


def test_not_a_gzip_tar_is_refused_and_leaves_nothing(owner_api, agent):
    before = stored_files()
    response = upload(owner_api, agent.pk, b"PK\x03\x04 not a tarball")
    assert response.status_code == 400
    assert response.json()["detail"] == "File must be a .tar.gz archive"
    assert not AgentVersion.objects.exists()
    assert stored_files() == before


def test_hostile_archive_is_refused_and_leaves_nothing(owner_api, agent):
    before = stored_files()
    files = agent_files("def handle(p):\n    return p\n") | {"../escape.py": "x = 1\n"}
    response = upload(owner_api, agent.pk, pack_files(files))
    assert response.status_code == 400
    assert "escape.py" in response.json()["detail"]
    assert not AgentVersion.objects.exists()
    assert stored_files() == before


def test_bad_manifest_names_the_field(owner_api, agent):
    files = agent_files("def handle(p):\n    return p\n", extra="resources: lots")
    response = upload(owner_api, agent.pk, pack_files(files))
    assert response.status_code == 400
    assert any(error["field"] == "resources" for error in response.json()["errors"])
    assert not AgentVersion.objects.exists()


def test_missing_file_field_is_a_400(owner_api, agent):
    response = owner_api.post(f"/api/v1/agents/{agent.pk}/versions", {}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "file"


def test_oversized_upload_is_a_413(owner_api, agent, settings):
    settings.AIMOS_UPLOAD_MAX_BYTES = 2048
    archive = pack_files(agent_files("def handle(p):\n    return p\n", blob=bytes(range(256)) * 64))
    response = upload(owner_api, agent.pk, archive + b"\0" * 200_000)
    assert response.status_code == 413
    assert not AgentVersion.objects.exists()


def test_archived_agent_takes_no_upload(owner_api, agent):
    services.update_agent(agent, status="archived")
    response = upload(
        owner_api, agent.pk, pack_files(agent_files("def handle(p):\n    return p\n"))
    )
    assert response.status_code == 409
    assert "archived" in response.json()["detail"]


def test_compat_upload_path_queues_a_version(owner_api, agent):
    file = SimpleUploadedFile("a.tar.gz", pack_files(agent_files("def handle(p):\n    return p\n")))
    response = owner_api.post(
        f"/api/v1/uploads/agent/{agent.pk}", {"file": file}, format="multipart"
    )
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    assert response.json()["agent_id"] == str(agent.pk)


def test_delete_is_refused_while_building_then_removes_files(owner_api, agent):
    upload(owner_api, agent.pk, pack_files(agent_files("def handle(p):\n    return p\n")))
    version = AgentVersion.objects.get(agent=agent)
    assert version.artifact_path.exists()
    assert owner_api.delete(f"/api/v1/agents/{agent.pk}").status_code == 409  # queued
    AgentVersion.objects.filter(pk=version.pk).update(status="failed")
    assert owner_api.delete(f"/api/v1/agents/{agent.pk}").status_code == 204
    assert not Agent.objects.filter(pk=agent.pk).exists()
    assert not version.storage_dir.exists()


def test_a_build_whose_worker_died_ends_failed(owner_api, agent):
    upload(owner_api, agent.pk, pack_files(agent_files("def handle(p):\n    return p\n")))
    version = AgentVersion.objects.get(agent=agent)
    assert AgentVersion.claim_build(version.pk)
    AgentVersion.objects.filter(pk=version.pk).update(
        build_started_at=timezone.now() - timedelta(seconds=settings.AIMOS_BUILD_TIMEOUT + 120)
    )
    assert builds.fail_stale_builds() == 1
    version.refresh_from_db()
    assert version.status == "failed"
    assert "did not finish in time" in version.build_log
    agent.refresh_from_db()
    assert agent.status == "failed"


def test_versions_list_runs_a_bounded_number_of_queries(
    owner_api, agent, django_assert_max_num_queries
):
    archive = pack_files(agent_files("def handle(p):\n    return p\n"))
    for _ in range(5):
        upload(owner_api, agent.pk, archive)
    with django_assert_max_num_queries(6):
        response = owner_api.get(f"/api/v1/agents/{agent.pk}/versions")
    assert [v["number"] for v in response.json()] == [1, 2, 3, 4, 5]
