"""The server's sandbox settings as plain data.

`core.sandbox_settings.sandbox_config()` fills a `SandboxConfig` from Django's settings; the
sandbox itself reads no settings, it is handed one of these (`get_backend`, `limits_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sandbox.base import Limits
from sandbox.requirements import BuildRules


@dataclass(frozen=True)
class SandboxConfig:
    """The AIMOS_SANDBOX*, AIMOS_DOCKER_*, AIMOS_MAX_* and AIMOS_BUILD_* settings."""

    backend: str = "process"
    root: Path = Path("var/sandbox")
    allow_unisolated: bool = False
    uid_base: int = 200_000
    allow_network: bool = False
    docker_base_image: str = "aimos-python:3.11"
    docker_agent_image: str = "aimos-agent"
    max_output_bytes: int = Limits.max_output_bytes
    max_timeout_seconds: int = 3600
    max_memory_mb: int = 2048
    max_cpus: float = 2.0
    max_pids: int = 256
    max_file_mb: int = Limits.max_file_mb
    max_open_files: int = Limits.max_open_files
    workspace_mb: int = Limits.workspace_mb
    build: BuildRules = BuildRules()
