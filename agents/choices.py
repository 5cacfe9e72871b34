from django.db import models


class AgentStatus(models.TextChoices):
    DRAFT = "draft"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    ARCHIVED = "archived"

    @classmethod
    def named(cls, value: str) -> str:
        """The status a list filter names: a status, or `active` (ready) and `inactive`
        (draft) as the reference platforms' clients say."""
        return {"active": cls.READY, "inactive": cls.DRAFT}.get(value, value)


class VersionStatus(models.TextChoices):
    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.QUEUED, cls.BUILDING)


class LogLevel(models.TextChoices):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogSource(models.TextChoices):
    BUILD = "build"
    RUNTIME = "runtime"
