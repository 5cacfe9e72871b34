"""People and their API keys."""

import hashlib
import hmac
import secrets
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.choices import ApiKeyStatus

USERNAME_NOT_EMAIL = "A username may not contain '@': it would look like an email address."


def username_refusal(username: str) -> str | None:
    """Why `username` may not be taken, for the rule the field's own validator does not
    hold: login accepts an email too, so a username that looks like one could shadow it."""
    if "@" in username:
        return USERNAME_NOT_EMAIL
    return None


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


KEY_SCHEME = "aimos"
# 64 random bits: prefixes stay unique without a retry loop even with millions of keys.
PREFIX_BYTES = 8
SECRET_BYTES = 32
# How stale `last_used_at` may be: it is written at most once per interval per key.
LAST_USED_INTERVAL = timedelta(seconds=60)


def hash_key(raw_key: str) -> str:
    """SHA-256 hex digest of a whole key: what the database keeps instead of the key."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def parse_prefix(raw_key: str) -> str | None:
    """The public prefix of `aimos_<prefix>_<secret>`, or None when the key is malformed."""
    scheme, _, rest = raw_key.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != KEY_SCHEME or len(prefix) != PREFIX_BYTES * 2 or not secret:
        return None
    try:
        int(prefix, 16)
    except ValueError:
        return None
    return prefix.lower()


class ApiKeyQuerySet(models.QuerySet):
    def for_user(self, user) -> "ApiKeyQuerySet":
        return self.filter(user=user)

    def not_revoked(self) -> "ApiKeyQuerySet":
        return self.filter(revoked_at__isnull=True)

    def usable(self) -> "ApiKeyQuerySet":
        return self.not_revoked().filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )


class ApiKey(models.Model):
    """A long-lived credential of one user, sent as `X-API-Key: aimos_<prefix>_<secret>`.

    Only the prefix (to find the row) and the SHA-256 of the whole key are stored; the
    key itself exists once, in the response that created it. A key is usable while it
    is neither revoked nor expired; revocation is final.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=PREFIX_BYTES * 2, unique=True, editable=False)
    hashed_key = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix})"

    @classmethod
    def generate(cls, user, name: str, expires_at=None) -> tuple["ApiKey", str]:
        """Create a key; returns the row and the plaintext key, which is never stored."""
        prefix = secrets.token_hex(PREFIX_BYTES)
        raw_key = f"{KEY_SCHEME}_{prefix}_{secrets.token_hex(SECRET_BYTES)}"
        key = cls.objects.create(
            user=user,
            name=name,
            key_prefix=prefix,
            hashed_key=hash_key(raw_key),
            expires_at=expires_at,
        )
        return key, raw_key

    def matches(self, raw_key: str) -> bool:
        """Constant-time comparison of a presented key with the stored hash."""
        return hmac.compare_digest(hash_key(raw_key), self.hashed_key)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return not self.is_revoked and not self.is_expired

    @property
    def status(self) -> str:
        if self.is_revoked:
            return ApiKeyStatus.REVOKED
        return ApiKeyStatus.EXPIRED if self.is_expired else ApiKeyStatus.ACTIVE

    def revoke(self) -> bool:
        """Revoke the key for good. Returns False (and changes nothing) if it already was.

        A conditional update, so two concurrent revocations record one `revoked_at`.
        """
        now = timezone.now()
        changed = ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if changed:
            self.revoked_at = now
        return bool(changed)

    def mark_used(self) -> None:
        """Record a use, writing at most once per LAST_USED_INTERVAL per key.

        The condition lives in the UPDATE so concurrent requests do not each write.
        """
        now = timezone.now()
        if self.last_used_at and now - self.last_used_at < LAST_USED_INTERVAL:
            return
        stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_INTERVAL)
        if ApiKey.objects.filter(stale, pk=self.pk).update(last_used_at=now):
            self.last_used_at = now
