"""Choosing a backend from the server's sandbox settings (`SandboxConfig`, plain data)."""

from __future__ import annotations

import functools
import os

from sandbox.base import Backend
from sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "get_backend"]


def get_backend(name: str | None = None, *, config: SandboxConfig) -> Backend:
    """The backend called `name` ("process" or "docker"), by default `config.backend`.

    Backends are imported lazily, so the docker SDK is loaded only when it is used. Each
    gets its settings as plain data (`config`, e.g. `core.sandbox_settings.sandbox_config()`).
    One instance per name, settings and the environment it reads (`PATH` for its tools,
    `DOCKER_HOST` for the engine) in a process: what a backend finds out about the host once
    (its tools, its cgroups, a probe sandbox) is not paid again for every run. Raises
    ValueError for an unknown name.
    """
    place = (os.environ.get("PATH"), os.environ.get("DOCKER_HOST"))
    return _backend(name or config.backend, config, place)


@functools.lru_cache(maxsize=16)
def _backend(name: str, config: SandboxConfig, place: tuple) -> Backend:
    if name == "process":
        from sandbox.process_backend import ProcessBackend

        return ProcessBackend(
            root=config.root,
            allow_unisolated=config.allow_unisolated,
            build=config.build,
            uid_base=config.uid_base,
        )
    if name == "docker":
        from sandbox.docker_backend import DockerBackend

        return DockerBackend.from_config(config)
    raise ValueError(f"unknown sandbox backend {name!r} (choose process or docker)")
