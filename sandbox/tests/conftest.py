"""Sandbox test fixtures: a real backend per parameter, agents built from a dict of files.

`backend` is parametrized over every backend, so `-k process` or `-k docker` picks one.
Environments are built once per distinct agent (a docker build is slow) and removed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import docker
import pytest

from core.sandbox_settings import sandbox_config
from sandbox.backends import get_backend
from sandbox.base import Backend, Environment, Run, SandboxUnavailable
from sandbox.docker_images import LABEL_ENV
from sandbox.process_backend import ProcessBackend
from sandbox.tests.helpers import OFFLINE

BACKENDS = ["process", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, tmp_path_factory) -> Backend:
    """A real backend whose environments live in a temporary root."""
    root = tmp_path_factory.mktemp(f"sandbox-{request.param}")
    root.chmod(0o755)
    chosen = get_backend(request.param, config=replace(sandbox_config(), root=root, build=OFFLINE))
    try:
        chosen.check()
    except SandboxUnavailable as exc:
        if request.param == "process":
            raise
        pytest.skip(str(exc))
    return chosen


SESSION_KEY_PREFIX = f"t{os.getpid()}-"


@pytest.fixture(scope="session", autouse=True)
def remove_session_images() -> Iterator[None]:
    """At the end of the session, remove every image of this session's versions (keys
    `t<pid>-…`, label `aimos.env`) still known to the engine, whatever test left it."""
    yield
    try:
        import docker  # the engine is optional: a host without it has no images to remove

        client = docker.from_env(timeout=30)
        images = client.images.list(filters={"label": LABEL_ENV})
    except Exception:  # noqa: BLE001
        return
    for image in images:
        if (image.labels or {}).get(LABEL_ENV, "").startswith(SESSION_KEY_PREFIX):
            try:
                client.images.remove(image.id, force=True)
            except Exception:  # noqa: BLE001 — already gone, or in use by a leftover
                pass


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    """A client of the Docker engine; the test is skipped when none answers."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"the Docker engine is not available ({exc}); run scripts/setup-system")
    return client


@pytest.fixture(scope="session")
def process_backend(tmp_path_factory) -> ProcessBackend:
    """The process backend alone, its environments in a temporary root."""
    root = tmp_path_factory.mktemp("process-root")
    root.chmod(0o755)
    chosen = ProcessBackend(root, build=OFFLINE)
    chosen.check()
    return chosen


@pytest.fixture(scope="session")
def make_agent(backend: Backend, tmp_path_factory) -> Iterator[Callable[..., Environment]]:
    """`make_agent({"agent/main.py": "..."}, manifest)` → a prepared Environment (cached)."""
    built: dict[str, Environment] = {}

    def make(files: dict[str, str], manifest: dict[str, Any] | None = None) -> Environment:
        manifest = {"name": "test-agent", "entrypoint": "agent.main:handle", **(manifest or {})}
        digest = hashlib.sha256(json.dumps([files, manifest], sort_keys=True).encode())
        # The session's pid keeps keys apart: docker images are global, so two concurrent test
        # sessions must not remove each other's.
        key = f"{SESSION_KEY_PREFIX}{digest.hexdigest()[:16]}"
        if key not in built:
            source = tmp_path_factory.mktemp("agent-src")
            for name, text in files.items():
                path = source / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(textwrap.dedent(text))
            built[key] = backend.prepare(source, manifest, key=key)
        return built[key]

    yield make
    for env in built.values():
        backend.remove(env)


@pytest.fixture
def start(backend: Backend) -> Iterator[Callable[..., Run]]:
    """`backend.start`, plus: every run it started is killed when the test ends (so a
    failing test leaves nothing running)."""
    runs: list[Run] = []

    def start_run(env: Environment, entrypoint: str, payload: Any = None, **kwargs: Any) -> Run:
        run = backend.start(env, entrypoint, payload, **kwargs)
        runs.append(run)
        return run

    yield start_run
    for run in runs:
        run.kill()
