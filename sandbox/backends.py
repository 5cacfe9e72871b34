"""Choosing a backend, and the one place in `sandbox/` that reads Django settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.base import Backend
from sandbox.requirements import BuildRules, index_hosts_of


@dataclass(frozen=True)
class SandboxConfig:
    """The server's sandbox settings as plain data (see the "Sandbox" section of settings)."""

    backend: str = "process"
    root: Path = Path("var/sandbox")
    allow_unisolated: bool = False
    uid_base: int = 200_000
    allow_network: bool = False
    docker_base_image: str = "aimos-python:3.11"
    docker_agent_image: str = "aimos-agent"
    max_output_bytes: int = 10 * 1024 * 1024
    max_timeout_seconds: int = 3600
    max_memory_mb: int = 2048
    max_cpus: float = 2.0
    max_pids: int = 256
    max_file_mb: int = 64
    max_open_files: int = 256
    workspace_mb: int = 256
    build: BuildRules = BuildRules()


def sandbox_config() -> SandboxConfig:
    """Read the AIMOS_SANDBOX* and AIMOS_MAX_* settings (the only reader of settings here)."""
    from django.conf import settings

    return SandboxConfig(
        backend=settings.AIMOS_SANDBOX,
        root=Path(settings.AIMOS_SANDBOX_ROOT),
        allow_unisolated=settings.AIMOS_SANDBOX_ALLOW_UNISOLATED,
        uid_base=settings.AIMOS_SANDBOX_UID_BASE,
        allow_network=settings.AIMOS_SANDBOX_ALLOW_NETWORK,
        docker_base_image=settings.AIMOS_DOCKER_BASE_IMAGE,
        docker_agent_image=getattr(settings, "AIMOS_DOCKER_AGENT_IMAGE", "aimos-agent"),
        max_output_bytes=settings.AIMOS_MAX_OUTPUT_BYTES,
        max_timeout_seconds=settings.AIMOS_MAX_TIMEOUT_SECONDS,
        max_memory_mb=settings.AIMOS_MAX_MEMORY_MB,
        max_cpus=settings.AIMOS_MAX_CPUS,
        max_pids=settings.AIMOS_MAX_PIDS,
        max_file_mb=settings.AIMOS_MAX_FILE_MB,
        max_open_files=settings.AIMOS_MAX_OPEN_FILES,
        workspace_mb=settings.AIMOS_SANDBOX_WORKSPACE_MB,
        build=BuildRules(
            index_url=settings.AIMOS_BUILD_INDEX_URL,
            index_hosts=tuple(settings.AIMOS_BUILD_INDEX_HOSTS)
            or index_hosts_of(settings.AIMOS_BUILD_INDEX_URL),
            allow_source=settings.AIMOS_BUILD_ALLOW_SOURCE,
            max_mb=settings.AIMOS_BUILD_MAX_MB,
            timeout_seconds=settings.AIMOS_BUILD_TIMEOUT,
        ),
    )


def get_backend(name: str | None = None, *, config: SandboxConfig | None = None) -> Backend:
    """The backend called `name` ("process" or "docker"), by default AIMOS_SANDBOX's.

    Backends are imported lazily, so the docker SDK is loaded only when it is used. Each
    gets its settings as plain data (`SandboxConfig`); `DockerBackend.from_config(config)`
    is the docker backend's constructor from it.
    Raises ValueError for an unknown name.
    """
    config = config or sandbox_config()
    name = name or config.backend
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
