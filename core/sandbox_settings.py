"""The sandbox's settings read from Django's: the one reader of them for `sandbox/`.

`sandbox` is plain Python and reads no settings; callers hand it `sandbox_config()`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from sandbox.config import SandboxConfig
from sandbox.requirements import BuildRules, index_hosts_of


def sandbox_config() -> SandboxConfig:
    """The AIMOS_SANDBOX*, AIMOS_DOCKER_*, AIMOS_MAX_* and AIMOS_BUILD_* settings, read now
    (so a test's changed settings are seen)."""
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
