"""People and their API keys."""

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A person using AIMOS. `is_staff` makes an admin: they see everyone's objects."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField("email address", unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    first_name = None
    last_name = None

    REQUIRED_FIELDS = ["email"]

    class Meta:
        ordering = ["date_joined"]

    @property
    def is_admin(self) -> bool:
        return self.is_staff

    @property
    def created_at(self):
        return self.date_joined

    def get_full_name(self) -> str:
        return self.full_name or self.username

    def get_short_name(self) -> str:
        return self.full_name or self.username
