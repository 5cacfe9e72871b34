"""The build of a version: install its requirements and check its entrypoint inside the
sandbox, then `ready` or `failed`. Run by the build job (`agents.jobs`), failed by its failure
callback and by the upkeep process when its worker died."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.activity import log, version_meta
from agents.choices import LogLevel, VersionStatus
from agents.models import AgentVersion
from core.sandbox_settings import sandbox_config
from notifications import feed
from sandbox import get_backend
from sandbox.base import Environment, SandboxError

logger = logging.getLogger(__name__)


class BuildLog:
    """Collects build output and writes it to the version row at most every half second,
    so people can watch a build as it happens without a write per line.

    Only the last `max_bytes` (UTF-8) of the output are kept, so neither the worker's memory
    nor the row grows with a build that prints without end: when earlier output was dropped,
    the text starts with one marker line saying how much. U+0000 is kept as U+FFFD (a text
    column cannot hold it)."""

    interval = 0.5
    max_bytes = 1024 * 1024

    def __init__(self, version_id) -> None:
        self.version_id = version_id
        self.lines: deque[tuple[str, int]] = deque()  # (line, its size with the newline)
        self.size = 0
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self.lock = threading.Lock()
        self.flushed_at = 0.0
        self.thread = threading.current_thread()

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n").replace("\x00", "\ufffd")
        encoded = line.encode("utf-8", "replace")
        if len(encoded) >= self.max_bytes:  # one line longer than the whole tail: its end
            self.dropped_bytes += len(encoded) - (self.max_bytes - 1)
            line = encoded[-(self.max_bytes - 1) :].decode("utf-8", "ignore")
            encoded = line.encode()
        with self.lock:
            self.lines.append((line, len(encoded) + 1))
            self.size += len(encoded) + 1
            while self.size > self.max_bytes:
                _, size = self.lines.popleft()
                self.size -= size
                self.dropped_bytes += size
                self.dropped_lines += 1
        if time.monotonic() - self.flushed_at >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        AgentVersion.objects.filter(pk=self.version_id, status=VersionStatus.BUILDING).update(
            build_log=self.text
        )
        if threading.current_thread() is not self.thread:
            # A backend's reader thread: its connection would outlive the build otherwise.
            connection.close()

    @property
    def text(self) -> str:
        with self.lock:
            tail = "\n".join(line for line, _ in self.lines)
            if not self.dropped_bytes:
                return tail
            return (
                f"[{self.dropped_bytes} bytes of earlier output ({self.dropped_lines} lines) "
                f"dropped: only the last {self.max_bytes} bytes are kept]\n{tail}"
            )


def environment_of(version: AgentVersion) -> Environment:
    """The sandbox environment a built version runs in."""
    return Environment(
        backend=version.sandbox_backend,
        key=str(version.pk),
        source_dir=version.source_dir,
        location=version.sandbox_location,
        manifest=version.manifest,
    )


def build_version(version_id) -> AgentVersion | None:
    """Build a queued version: install its requirements and check its entrypoint inside the
    sandbox. Ends `ready` (and the agent's current version moves to it) or `failed` with the
    reason in `build_log`. Returns None when another worker already claimed the build."""
    if not AgentVersion.claim_build(version_id):
        return None
    version = AgentVersion.objects.select_related("agent").get(pk=version_id)
    version.agent.refresh_state()
    log(version.agent, f"Build of {version.label} started", metadata=version_meta(version))
    _notify_build(version, "build_started")
    build_log = BuildLog(version.pk)
    backend = None
    try:
        backend = get_backend(config=sandbox_config())
        build_log(f"Building {version.label} with the {backend.name} sandbox")
        env = backend.prepare(
            version.source_dir, version.manifest, key=str(version.pk), log=build_log
        )
        build_log(f"Checking the entrypoint {version.entrypoint}")
        inspection = backend.inspect(env, version.entrypoint)
        if not inspection.ok or not inspection.callable:
            reason = inspection.error or f"{version.entrypoint} is not callable"
            if inspection.traceback:
                build_log(inspection.traceback.rstrip())
            raise SandboxError(f"Entrypoint check failed: {reason}")
        build_log(f"Entrypoint {version.entrypoint}{inspection.signature or ''} is callable")
        build_log("Build succeeded")
        ok, location = True, env.location
    except SandboxError as exc:
        build_log(f"Build failed: {exc}")
        ok, location = False, ""
    except Exception as exc:  # a bug or an engine error: the version must still end failed
        logger.exception("build of version %s crashed", version_id)
        build_log(f"Build failed: internal error ({exc.__class__.__name__}: {exc})")
        build_log(traceback.format_exc().rstrip())
        ok, location = False, ""
    _finish_build(
        version_id,
        ok=ok,
        log_text=build_log.text,
        backend=backend.name if backend else "",
        location=location,
    )
    return AgentVersion.objects.get(pk=version_id)


def _finish_build(
    version_id, *, ok: bool, log_text: str, backend: str = "", location: str = ""
) -> None:
    with transaction.atomic():
        version = (
            AgentVersion.objects.select_for_update().select_related("agent").get(pk=version_id)
        )
        if version.status != VersionStatus.BUILDING:
            return
        version.finish_build(ready=ok, log=log_text, backend=backend, location=location)
        version.agent.refresh_state()
        _notify_build(version, "build_completed")
        if ok:
            log(
                version.agent,
                f"Build of {version.label} completed",
                metadata=version_meta(version),
            )
        else:
            last = log_text.strip().splitlines()[-1][:500] if log_text.strip() else "unknown reason"
            log(
                version.agent,
                f"Build of {version.label} failed: {last}",
                level=LogLevel.ERROR,
                metadata=version_meta(version),
            )


def _notify_build(version: AgentVersion, kind: str) -> None:
    feed.notify(
        version.agent.owner_id,
        kind,
        {
            "agent_id": str(version.agent_id),
            "agent_name": version.agent.name,
            "version": version.label,
            "status": version.status,
        },
    )


def fail_build(version_id, reason: str) -> None:
    """Mark a build that died (job crashed, timed out, worker killed) as failed."""
    version = AgentVersion.objects.filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.BUILDING:
        return
    text = f"{version.build_log}\nBuild failed: {reason}".strip()
    _finish_build(version_id, ok=False, log_text=text)


def fail_stale_builds() -> int:
    """Builds still `building` after the build timeout (their worker died) end failed."""
    cutoff = timezone.now() - timedelta(seconds=settings.AIMOS_BUILD_TIMEOUT + 60)
    stale = list(AgentVersion.stale_builds(cutoff).values_list("pk", flat=True))
    for version_id in stale:
        fail_build(version_id, "the build did not finish in time (its worker stopped)")
    return len(stale)
