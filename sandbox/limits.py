"""Limits of a run: what the manifest asks for, capped by the server's maxima.

The defaults of a run are `Limits`' own field defaults (`DEFAULTS`); `INSPECT_LIMITS` are
those of importing an entrypoint (both backends).
"""

from __future__ import annotations

from typing import Any

from sandbox.base import Limits
from sandbox.config import SandboxConfig

DEFAULTS = Limits()
INSPECT_LIMITS = Limits(timeout_seconds=60, memory_mb=512, pids=64)


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
    config: SandboxConfig,
) -> Limits:
    """The `Limits` of a run of a version with this manifest.

    `timeout_seconds` (asked by the caller of one execution) wins over the manifest's
    `timeout`; every value is capped by the server's maxima (`config`, the AIMOS_MAX_*
    settings); network is on only when the manifest asks for it and the server allows it.
    Raises ValueError for a value that is not a positive number.
    """
    resources = manifest.get("resources") or {}
    if not isinstance(resources, dict):
        raise ValueError("resources must be a mapping")
    timeout = _number(
        timeout_seconds if timeout_seconds is not None else manifest.get("timeout"),
        DEFAULTS.timeout_seconds,
        "timeout",
    )
    memory = _number(resources.get("memory_mb"), DEFAULTS.memory_mb, "resources.memory_mb")
    cpus = _number(resources.get("cpus"), DEFAULTS.cpus, "resources.cpus")
    pids = _number(resources.get("pids"), DEFAULTS.pids, "resources.pids")
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
