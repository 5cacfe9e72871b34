from django.db import models


class ApiKeyStatus(models.TextChoices):
    """What an API key's dates say of it (`ApiKey.status`); not stored."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
