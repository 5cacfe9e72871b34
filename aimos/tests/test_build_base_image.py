"""`manage.py build_base_image`: the Docker backend's base image, made without a registry."""

from __future__ import annotations

import io

import docker
import docker.errors
import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"the Docker engine is not available ({exc}); run scripts/setup-system")
    return client


def test_build_base_image_does_nothing_when_the_image_exists(settings, engine):
    tag = settings.AIMOS_DOCKER_BASE_IMAGE
    image_id = engine.images.get(tag).id
    out = io.StringIO()

    call_command("build_base_image", tag=tag, stdout=out)

    assert "present" in out.getvalue()
    assert engine.images.get(tag).id == image_id
