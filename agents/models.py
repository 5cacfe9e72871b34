"""Agents, their versions (one per uploaded archive) and their log."""

import re
import uuid
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents.choices import AgentStatus, LogLevel, LogSource, VersionStatus
from agents.manifest import NAME_RE
from agents.runs import runs
from core.owned import OwnedQuerySet

NAME_RULE = "Use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit."
TAG_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
MAX_TAGS = 20


def validate_name(value: str) -> str:
    """An agent's name (the same rule as a manifest's `name`): the API, the pages and the
    admin all check it here."""
    if not NAME_RE.fullmatch(value):
        raise ValidationError(NAME_RULE, code="invalid")
    return value


def clean_tags(values: Iterable[str]) -> list[str]:
    """Tags as stored: each stripped and lowercased, duplicates dropped, order kept, at most
    `MAX_TAGS`; ValidationError names the first bad one."""
    tags: list[str] = []
    for value in values:
        tag = value.strip().lower()
        if not TAG_RE.fullmatch(tag):
            raise ValidationError(
                f"{tag!r} is not a valid tag (a-z, 0-9, '-', '_', '.').", code="invalid"
            )
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise ValidationError(f"At most {MAX_TAGS} tags.", code="max_length")
    return tags


class AgentQuerySet(OwnedQuerySet):
    def with_tag(self, tag: str):
        # Tags are stored as a JSON list of slugs; matching the quoted slug in its text form
        # works the same on PostgreSQL and SQLite.
        return self.filter(tags__icontains=f'"{tag.lower()}"')

    def with_execution_stats(self):
        """Annotate each agent with `total_executions`, `successful_executions` and
        `last_execution` (when its newest run was created), in the same query.

        The one rule for these numbers (the runs' app gives it, see `agents.runs`): the API's
        list and detail and the pages all read them from here.
        """
        return runs().with_stats(self)

    def search(self, text: str):
        """Agents whose name, description or role contains `text` (any case)."""
        return self.filter(
            Q(name__icontains=text) | Q(description__icontains=text) | Q(role__icontains=text)
        )


class Agent(models.Model):
    """A named, owned agent. Runnable when it has a `current_version` and is not archived."""

    OWNER_FIELD = "owner"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents"
    )
    name = models.SlugField(max_length=64)
    description = models.TextField(blank=True)
    role = models.CharField(max_length=200, blank=True)
    tags = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.DRAFT)
    current_version = models.ForeignKey(
        "AgentVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="agent_name_unique_per_owner")
        ]
        indexes = [models.Index(fields=["owner", "status"])]

    def __str__(self) -> str:
        return self.name

    @property
    def success_rate(self) -> float:
        """Percent of the agent's runs that completed, one decimal (0.0 before any run).
        Reads the numbers `AgentQuerySet.with_execution_stats` annotates."""
        total = self.total_executions
        return round(100.0 * self.successful_executions / total, 1) if total else 0.0

    @property
    def is_runnable(self) -> bool:
        return self.status != AgentStatus.ARCHIVED and self.current_version_id is not None

    def refresh_state(self) -> None:
        """Recompute `current_version` (newest ready version) and `status` from the versions.

        The one place both are decided; called after every build transition. An archived
        agent stays archived.
        """
        versions = self.versions.all()
        self.current_version = (
            versions.filter(status=VersionStatus.READY).order_by("-number").first()
        )
        if self.status != AgentStatus.ARCHIVED:
            if self.current_version is not None:
                self.status = AgentStatus.READY
            elif versions.filter(status__in=VersionStatus.active()).exists():
                self.status = AgentStatus.BUILDING
            elif versions.exists():
                self.status = AgentStatus.FAILED
            else:
                self.status = AgentStatus.DRAFT
        self.save(update_fields=["current_version", "status", "updated_at"])

    def archive(self) -> None:
        self.status = AgentStatus.ARCHIVED
        self.save(update_fields=["status", "updated_at"])

    def unarchive(self) -> None:
        """Back from the archive, with the status its versions give."""
        self.status = AgentStatus.DRAFT
        self.refresh_state()

    @property
    def storage_dir(self) -> Path:
        return Path(settings.AIMOS_ARTIFACT_ROOT) / str(self.id)


class AgentVersion(models.Model):
    """One uploaded archive of an agent: `queued → building → ready | failed`."""

    OWNER_FIELD = "agent__owner"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=16, choices=VersionStatus.choices, default=VersionStatus.QUEUED
    )
    artifact_sha256 = models.CharField(max_length=64)
    artifact_size = models.PositiveBigIntegerField()
    manifest = models.JSONField(default=dict)
    entrypoint = models.CharField(max_length=255)
    build_log = models.TextField(blank=True)
    sandbox_backend = models.CharField(max_length=16, blank=True)
    sandbox_location = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    build_started_at = models.DateTimeField(null=True, blank=True)
    build_finished_at = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["agent", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "number"], name="version_number_unique_per_agent"
            )
        ]

    def __str__(self) -> str:
        return f"{self.agent.name} {self.label}"

    @property
    def label(self) -> str:
        return f"v{self.number}"

    @staticmethod
    def number_from_label(value) -> int | None:
        """The number a version reference names — 3, "3", "v3" or "V3" — else None."""
        if isinstance(value, bool):
            return None
        match = re.fullmatch(r"[vV]?([0-9]+)", str(value).strip())
        return int(match.group(1)) if match else None

    @property
    def storage_dir(self) -> Path:
        return self.agent.storage_dir / str(self.id)

    @property
    def artifact_path(self) -> Path:
        return self.storage_dir / "artifact.tar.gz"

    @property
    def source_dir(self) -> Path:
        return self.storage_dir / "src"

    @classmethod
    def claim_build(cls, pk) -> bool:
        """`queued → building` for exactly one worker: the conditional update changes one row."""
        return (
            cls.objects.filter(pk=pk, status=VersionStatus.QUEUED).update(
                status=VersionStatus.BUILDING,
                build_started_at=timezone.now(),
                build_finished_at=None,
                build_log="",
                updated_at=timezone.now(),
            )
            == 1
        )

    def finish_build(self, *, ready: bool, log: str, backend: str = "", location: str = "") -> None:
        """`building → ready | failed`; refuses any other starting state."""
        if self.status != VersionStatus.BUILDING:
            raise ValueError(f"cannot finish the build of a {self.status} version")
        self.status = VersionStatus.READY if ready else VersionStatus.FAILED
        self.build_log = log
        self.sandbox_backend = backend if ready else ""
        self.sandbox_location = location if ready else ""
        self.build_finished_at = timezone.now()
        self.save()

    def requeue(self) -> None:
        """`ready | failed → queued` for a rebuild of the same artifact."""
        if self.status in VersionStatus.active():
            raise ValueError(f"the version is already {self.status}")
        self.status = VersionStatus.QUEUED
        self.sandbox_backend = ""
        self.sandbox_location = ""
        self.save()

    @classmethod
    def stale_builds(cls, older_than):
        """Builds whose job died: building since before `older_than`."""
        return cls.objects.filter(status=VersionStatus.BUILDING, build_started_at__lt=older_than)


class AgentLog(models.Model):
    """One entry of an agent's log: build and runtime events worth a person's attention."""

    OWNER_FIELD = "agent__owner"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="logs")
    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    level = models.CharField(max_length=8, choices=LogLevel.choices, default=LogLevel.INFO)
    source = models.CharField(max_length=16, choices=LogSource.choices)
    message = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["timestamp", "id"]

    def __str__(self) -> str:
        return f"{self.timestamp:%Y-%m-%d %H:%M:%S} {self.level} {self.message[:60]}"
