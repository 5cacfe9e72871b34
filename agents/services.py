"""Use cases of agents and versions: called by the API, the admin and the build job alike."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max

from agents.activity import log, version_meta
from agents.archive import extract_archive
from agents.builds import environment_of
from agents.choices import AgentStatus, LogSource, VersionStatus
from agents.jobs import enqueue_build
from agents.manifest import load_manifest
from agents.models import Agent, AgentVersion
from agents.runs import runs
from core.errors import Conflict, NotFound, ServiceError
from core.sandbox_settings import sandbox_config
from notifications import feed
from sandbox import get_backend

logger = logging.getLogger(__name__)


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


# --- Access ------------------------------------------------------------------------------------


def access_agent(user, agent_id, *, with_stats: bool = False) -> Agent:
    """The agent `user` may see, else NotFound (another user's agent does not exist for them).

    `with_stats` annotates it with its execution numbers (`Agent.success_rate` reads them).
    """
    agents = Agent.objects.for_user(user).select_related("current_version")
    if with_stats:
        agents = agents.with_execution_stats()
    try:
        return agents.get(pk=agent_id)
    except (Agent.DoesNotExist, ValidationError, ValueError):  # a malformed id is not found either
        raise NotFound("Agent not found") from None


def find_agent(user, ref) -> Agent:
    """The agent `ref` names for `user`: its id, or the name of one of the user's own agents."""
    try:
        uuid.UUID(str(ref))
    except ValueError:
        try:
            return Agent.objects.select_related("current_version").get(owner=user, name=str(ref))
        except Agent.DoesNotExist:
            raise NotFound("Agent not found") from None
    return access_agent(user, ref)


def latest_ready_agent(user) -> Agent:
    """The user's most recently created agent that can run, else Conflict."""
    agent = (
        Agent.objects.filter(owner=user, status=AgentStatus.READY, current_version__isnull=False)
        .select_related("current_version")
        .order_by("-created_at")
        .first()
    )
    if agent is None:
        raise Conflict("You have no ready agent to run; upload a version first")
    return agent


def access_version(agent: Agent, number: int | str) -> AgentVersion:
    """The agent's version `number` names (3, "3", "v3"), else NotFound."""
    number = AgentVersion.number_from_label(number)
    if number is None:
        raise NotFound("Version not found")
    try:
        return agent.versions.get(number=number)
    except AgentVersion.DoesNotExist:
        raise NotFound("Version not found") from None


# --- Agents ------------------------------------------------------------------------------------


def _name_taken(owner, name: str, exclude=None) -> bool:
    agents = Agent.objects.filter(owner=owner, name=name)
    if exclude is not None:
        agents = agents.exclude(pk=exclude.pk)
    return agents.exists()


def _name_error() -> ServiceError:
    return ServiceError.invalid(
        "name",
        "You already have an agent with this name.",
        detail="An agent with this name already exists",
    )


def create_agent(owner, *, name: str, description: str = "", role: str = "", tags=()) -> Agent:
    if _name_taken(owner, name):
        raise _name_error()
    try:
        with transaction.atomic():
            agent = Agent.objects.create(
                owner=owner, name=name, description=description, role=role, tags=list(tags)
            )
    except IntegrityError:  # a concurrent create with the same name won
        raise _name_error() from None
    log(agent, "Agent created", source=LogSource.BUILD)
    feed.notify(
        owner.pk,
        "agent_created",
        {"agent_id": str(agent.pk), "agent_name": agent.name, "status": agent.status},
    )
    return agent


def update_agent(agent: Agent, **changes: Any) -> Agent:
    """Change the editable fields; `status` accepts only archiving and un-archiving."""
    status = changes.pop("status", None)
    if "name" in changes and _name_taken(agent.owner, changes["name"], exclude=agent):
        raise _name_error()
    for field, value in changes.items():
        setattr(agent, field, value)
    if changes:
        agent.save()
    if status == AgentStatus.ARCHIVED and agent.status != AgentStatus.ARCHIVED:
        agent.archive()
        log(agent, "Agent archived", source=LogSource.BUILD)
    elif (
        status is not None
        and status != AgentStatus.ARCHIVED
        and agent.status == AgentStatus.ARCHIVED
    ):
        agent.unarchive()
        log(agent, "Agent restored from the archive", source=LogSource.BUILD)
    return agent


def check_agent_idle(agent: Agent) -> None:
    """Conflict while a build or a run of the agent is in progress."""
    if agent.versions.filter(status__in=VersionStatus.active()).exists():
        raise Conflict("The agent has a build in progress; try again when it ends")
    if runs().in_progress(agent):
        raise Conflict("The agent has executions in progress; cancel them first")


def delete_agent(agent: Agent) -> None:
    """Delete the agent, its versions and their stored artifacts and environments."""
    check_agent_idle(agent)
    versions = list(agent.versions.all())
    storage = agent.storage_dir
    agent.delete()
    transaction.on_commit(lambda: _remove_files(storage, versions))


def _remove_files(storage: Path, versions: list[AgentVersion]) -> None:
    for version in versions:
        if version.sandbox_location:
            try:
                backend = get_backend(version.sandbox_backend, config=sandbox_config())
                backend.remove(environment_of(version))
            except Exception:  # cleanup is best effort: the record is already gone
                logger.exception("could not remove the environment of version %s", version.pk)
    shutil.rmtree(storage, ignore_errors=True)


# --- Versions ----------------------------------------------------------------------------------


def check_upload_size(size: int | None) -> None:
    limit = settings.AIMOS_UPLOAD_MAX_BYTES
    if size is not None and size > limit:
        raise PayloadTooLarge(f"File too large: the limit is {limit} bytes")


def _staging_root() -> Path:
    """The staging folder, under an artifact root that only the server's user may enter
    (0700: created so, or tightened). Sandboxes get a copy of the code, never this folder."""
    root = Path(settings.AIMOS_ARTIFACT_ROOT)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_mode & 0o077:
        root.chmod(0o700)
    path = root / ".staging"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _copy_capped(upload: IO[bytes], target: Path) -> None:
    limit = settings.AIMOS_UPLOAD_MAX_BYTES
    written = 0
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        chunks = (
            upload.chunks()
            if hasattr(upload, "chunks")
            else iter(lambda: upload.read(1 << 20), b"")
        )
        for chunk in chunks:
            written += len(chunk)
            if written > limit:
                raise PayloadTooLarge(f"File too large: the limit is {limit} bytes")
            out.write(chunk)


def create_version(agent: Agent, upload: IO[bytes]) -> AgentVersion:
    """Validate an uploaded archive and record it as the agent's next version, queued to build.

    The archive is checked, extracted and its manifest validated in a staging folder first;
    a rejected upload leaves no file and no row. Numbers are 1, 2, … per agent, never
    duplicated even for concurrent uploads (the agent row is locked while numbering).
    """
    if agent.status == AgentStatus.ARCHIVED:
        raise Conflict("The agent is archived; restore it before uploading")
    check_upload_size(getattr(upload, "size", None))
    version_id = uuid.uuid4()
    staging = _staging_root() / str(version_id)
    staging.mkdir()
    try:
        _copy_capped(upload, staging / "artifact.tar.gz")
        info = extract_archive(staging / "artifact.tar.gz", staging / "src")
        manifest = load_manifest(staging / "src")
        with transaction.atomic():
            locked = Agent.objects.select_for_update().get(pk=agent.pk)
            number = (locked.versions.aggregate(top=Max("number"))["top"] or 0) + 1
            version = AgentVersion.objects.create(
                id=version_id,
                agent=locked,
                number=number,
                artifact_sha256=info.sha256,
                artifact_size=info.size,
                manifest=manifest,
                entrypoint=manifest["entrypoint"],
            )
            version.storage_dir.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(version.storage_dir)
            locked.refresh_state()
            log(locked, f"Version {version.label} uploaded", metadata=version_meta(version))
            transaction.on_commit(lambda: enqueue_build(version.pk))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(
            Path(settings.AIMOS_ARTIFACT_ROOT) / str(agent.pk) / str(version_id), ignore_errors=True
        )
        raise
    agent.refresh_from_db()
    return version


def rebuild_version(version: AgentVersion) -> AgentVersion:
    """Build the same artifact again (e.g. after the server's sandbox changed)."""
    if version.agent.status == AgentStatus.ARCHIVED:
        raise Conflict("The agent is archived; restore it before rebuilding")
    with transaction.atomic():
        version = AgentVersion.objects.select_for_update().get(pk=version.pk)
        if version.status in VersionStatus.active():
            raise Conflict(f"The version is already {version.status}")
        version.requeue()
        version.agent.refresh_state()
        log(version.agent, f"Rebuild of {version.label} requested", metadata=version_meta(version))
        transaction.on_commit(lambda: enqueue_build(version.pk))
    return version
