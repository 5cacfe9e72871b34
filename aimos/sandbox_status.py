"""Whether this host can run the configured sandbox, and the command that makes it so.

Read by the system status (`GET system/status`, the dashboard's overview) and by `make run`'s
launcher at start. Plain Python over `sandbox` (no models), so the launcher can import it
before Django is set up; the settings are read only when a status is asked for.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

from core.sandbox_settings import sandbox_config
from sandbox.backends import SandboxConfig, get_backend
from sandbox.base import Backend

logger = logging.getLogger(__name__)

# How long a backend's answer is reused: the process backend starts bwrap to know.
STATUS_SECONDS = 5.0
# What `scripts/setup-system --sandbox process` provides (bubblewrap, util-linux, libseccomp2).
PROCESS_TOOLS = ("bwrap", "prlimit", "setpriv")
PROCESS_LIBRARIES = ("seccomp",)


def fix_command(backend: str) -> str | None:
    """The one command that makes the sandbox `backend` available on this host, or None when
    installing cannot help (everything is installed, yet the kernel refuses namespaces here)."""
    as_root = os.geteuid() == 0
    if backend == "process" and not as_root:
        # Each run gets its own uid and cgroups, which takes root: `make run` as root installs
        # what is missing (scripts/setup-system) and serves as root; -E keeps DATABASE_URL etc.
        return "sudo -E make run"
    if (
        backend == "process"
        and all(shutil.which(tool) for tool in PROCESS_TOOLS)
        and all(ctypes.util.find_library(lib) for lib in PROCESS_LIBRARIES)
    ):
        return None
    return f"{'' if as_root else 'sudo '}scripts/setup-system --sandbox {backend}"


def availability(backend: Backend) -> dict:
    """`{"backend", "available", "reason", "fix"}` of `backend` on this host, asked now.

    `reason` is the backend's own (`Backend.availability()`, which changes nothing on the host);
    `fix` is `fix_command`'s. A probe that crashes counts as unavailable.
    """
    try:
        reason = backend.availability()
    except Exception as exc:
        reason = _crashed(backend.name, exc)
    return _answer(backend.name, reason)


def _answer(name: str, reason: str | None) -> dict:
    return {
        "backend": name,
        "available": reason is None,
        "reason": reason,
        "fix": None if reason is None else fix_command(name),
    }


def _crashed(name: str, exc: Exception) -> str:
    logger.exception("Checking the %s sandbox failed", name)
    return f"checking the {name} sandbox failed: {exc}"


@dataclass
class _Probe:
    config: SandboxConfig
    backend: Backend | None
    expires: float
    answer: dict


_lock = threading.Lock()
_last: _Probe | None = None


def sandbox_status() -> dict:
    """`availability()` of the configured sandbox (AIMOS_SANDBOX), as this process sees it
    (under `make run`, the workers see the same host as the same user).

    The answer is reused for STATUS_SECONDS, and the backend instance for as long as the
    configuration stays the same (the process backend remembers a success).
    """
    global _last
    config = sandbox_config()
    with _lock:
        backend = None
        if _last is not None and _last.config == config:
            if time.monotonic() < _last.expires:
                return dict(_last.answer)
            backend = _last.backend
        if backend is None:
            try:
                backend = get_backend(config=config)
            except Exception as exc:
                answer = _answer(config.backend, _crashed(config.backend, exc))
        if backend is not None:
            answer = availability(backend)
        _last = _Probe(config, backend, time.monotonic() + STATUS_SECONDS, answer)
        return dict(answer)


def forget() -> None:
    """The next `sandbox_status()` asks the backend again (the host changed)."""
    global _last
    with _lock:
        _last = None
