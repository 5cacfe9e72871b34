"""Limits of a run: what the manifest asks for, capped by the server's maxima."""

from __future__ import annotations

from typing import Any

from sandbox.backends import SandboxConfig, sandbox_config
from sandbox.base import Limits

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MEMORY_MB = 256
DEFAULT_CPUS = 0.5
DEFAULT_PIDS = 64


def _number(value: Any, default: float, name: str) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


def limits_for(
    manifest: dict[str, Any],
    *,
    timeout_seconds: float | None = None,
    config: SandboxConfig | None = None,
) -> Limits:
    """The `Limits` of a run of a version with this manifest.

    `timeout_seconds` (asked by the caller of one execution) wins over the manifest's
    `timeout`; every value is capped by the server's AIMOS_MAX_* settings; network is on
    only when the manifest asks for it and AIMOS_SANDBOX_ALLOW_NETWORK allows it.
    Raises ValueError for a value that is not a positive number.
    """
    config = config or sandbox_config()
    resources = manifest.get("resources") or {}
    if not isinstance(resources, dict):
        raise ValueError("resources must be a mapping")
    timeout = _number(
        timeout_seconds if timeout_seconds is not None else manifest.get("timeout"),
        DEFAULT_TIMEOUT_SECONDS,
        "timeout",
    )
    memory = _number(resources.get("memory_mb"), DEFAULT_MEMORY_MB, "resources.memory_mb")
    cpus = _number(resources.get("cpus"), DEFAULT_CPUS, "resources.cpus")
    pids = _number(resources.get("pids"), DEFAULT_PIDS, "resources.pids")
    return Limits(
        timeout_seconds=float(min(timeout, config.max_timeout_seconds)),
        memory_mb=int(min(memory, config.max_memory_mb)),
        cpus=float(min(cpus, config.max_cpus)),
        pids=int(min(pids, config.max_pids)),
        max_output_bytes=config.max_output_bytes,
        max_file_mb=config.max_file_mb,
        max_open_files=config.max_open_files,
        workspace_mb=config.workspace_mb,
        network=bool(manifest.get("network")) and config.allow_network,
    )
