from django.db import models


class SessionStatus(models.TextChoices):
    STARTING = "starting"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    FAILED = "failed"

    @classmethod
    def live(cls) -> tuple[str, ...]:
        """Held by a session host (or waiting for one): these count against a user's cap."""
        return (cls.STARTING, cls.ACTIVE, cls.PAUSED)

    @classmethod
    def ended(cls) -> tuple[str, ...]:
        """No sandbox; the workspace is kept (until the retention deletes it)."""
        return (cls.STOPPED, cls.FAILED)
