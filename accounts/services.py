"""Use cases of accounts: registration, tokens, API keys.

Views, admin and jobs call these; each raises a domain exception from `core.errors`
when it refuses, never a DRF one.
"""

import datetime
import uuid
from dataclasses import dataclass

from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.models import update_last_login
from django.core.cache import cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken, Token

from accounts.models import ApiKey, User, parse_prefix, username_refusal
from core.errors import NotFound, ServiceError, Unauthenticated

# --- Users ----------------------------------------------------------------------------------


def check_registration(*, username: str, email: str, password: str, full_name: str = "") -> None:
    """Refuse a username that looks like an email, a taken username or email
    (case-insensitively) and a weak password."""
    errors = []
    if why := username_refusal(username):
        errors.append(("username", why))
    elif User.objects.filter(username__iexact=username).exists():
        errors.append(("username", "A user with that username already exists."))
    if User.objects.filter(email__iexact=email).exists():
        errors.append(("email", "A user with that email already exists."))
    candidate = User(username=username, email=email, full_name=full_name)
    try:
        password_validation.validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        errors.extend(("password", message) for message in exc.messages)
    if errors:
        (field, message), *more = errors
        raise ServiceError.invalid(field, message, more=more)


def register_user(*, username: str, email: str, password: str, full_name: str = "") -> User:
    """Create an active, non-admin user with a validated password; the username and
    email are unique whatever the case."""
    email = User.objects.normalize_email(email)
    check_registration(username=username, email=email, password=password, full_name=full_name)
    try:
        with transaction.atomic():
            return User.objects.create_user(
                username=username, email=email, password=password, full_name=full_name
            )
    except IntegrityError:
        # Another registration took the name between the check and the insert.
        raise ServiceError.invalid(
            "username", "A user with that username or email already exists."
        ) from None


# --- JWT ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


def _revoked_access_key(jti: str) -> str:
    return f"accounts:revoked-access:{jti}"


def issue_tokens(user: User) -> TokenPair:
    """A new refresh token (recorded as outstanding) and an access token derived from it."""
    refresh = RefreshToken.for_user(user)
    lifetime = jwt_settings.ACCESS_TOKEN_LIFETIME
    return TokenPair(
        access_token=str(refresh.access_token),
        refresh_token=str(refresh),
        expires_in=int(lifetime.total_seconds()),
    )


def resolve_username(identifier: str) -> str:
    """Login accepts a username or an email. Usernames may not contain '@', so an identifier
    with one is an email: it names the user whose email it is, never a username that happens
    to be spelled the same (one registered before the rule cannot shadow anyone's email)."""
    if "@" in identifier:
        match = User.objects.filter(email__iexact=identifier).values_list("username", flat=True)
        return match.first() or identifier
    return identifier


def login(identifier: str, password: str) -> TokenPair:
    """Tokens for an active user whose password matches; the same 401 whatever was wrong."""
    user = authenticate(username=resolve_username(identifier), password=password)
    if user is None:
        raise Unauthenticated("Invalid username or password", code="invalid_credentials")
    update_last_login(None, user)
    return issue_tokens(user)


def _invalid_refresh() -> Unauthenticated:
    return Unauthenticated("Invalid or expired refresh token", code="token_not_valid")


def refresh_tokens(raw_refresh: str) -> TokenPair:
    """Rotate a refresh token: the presented one is blacklisted, a new pair is issued.

    A refresh token works once. If two requests race with the same token, only the one
    that blacklists it first gets new tokens.
    """
    try:
        refresh = RefreshToken(raw_refresh)
    except TokenError:
        raise _invalid_refresh() from None
    user = User.objects.filter(
        **{jwt_settings.USER_ID_FIELD: refresh.get(jwt_settings.USER_ID_CLAIM)}, is_active=True
    ).first()
    if user is None:
        raise _invalid_refresh()
    # get_or_create on a unique row: of two racing requests, one sees created=False.
    _, newly_blacklisted = refresh.blacklist()
    if not newly_blacklisted:
        raise _invalid_refresh()
    return issue_tokens(user)


def logout(
    user: User, *, refresh_token: str | None = None, access_token: Token | None = None
) -> None:
    """End a login: the refresh token (if given) is blacklisted, and the access token of
    this request (if it is one) is refused from now until it would have expired."""
    if refresh_token:
        try:
            refresh = RefreshToken(refresh_token)
        except TokenError:
            raise ServiceError.invalid(
                "refresh_token", "Invalid or expired refresh token"
            ) from None
        if str(refresh.get(jwt_settings.USER_ID_CLAIM)) != str(user.pk):
            raise ServiceError.invalid(
                "refresh_token", "This refresh token belongs to someone else"
            )
        refresh.blacklist()
    if access_token is not None:
        revoke_access_token(access_token)


def revoke_access_token(token: Token) -> None:
    """Refuse this access token until its expiry (kept in the shared cache, not in memory,
    so every web process sees it)."""
    expires = datetime.datetime.fromtimestamp(token["exp"], tz=datetime.UTC)
    remaining = int((expires - timezone.now()).total_seconds()) + 1
    if remaining > 0:
        cache.set(_revoked_access_key(token[jwt_settings.JTI_CLAIM]), True, timeout=remaining)


def is_access_token_revoked(token: Token) -> bool:
    return bool(cache.get(_revoked_access_key(token[jwt_settings.JTI_CLAIM])))


# --- API keys -------------------------------------------------------------------------------


def create_api_key(
    user: User, *, name: str, expires_at: datetime.datetime | None = None
) -> tuple[ApiKey, str]:
    """A new key for `user`; returns the row and the plaintext key, shown once and never
    stored."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError.invalid("expires_at", "Must be in the future.")
    return ApiKey.generate(user, name=name, expires_at=expires_at)


def access_api_key(user: User, key_id) -> ApiKey:
    """One of the user's own keys that is not revoked; anything else is NotFound.

    Keys are credentials of a person: admins manage other people's keys in the admin,
    not through the API.
    """
    try:
        key_id = uuid.UUID(str(key_id))
    except ValueError:
        raise NotFound("API key not found") from None
    key = ApiKey.objects.for_user(user).not_revoked().filter(pk=key_id).first()
    if key is None:
        raise NotFound("API key not found")
    return key


def revoke_api_key(key: ApiKey) -> bool:
    """The key is refused from the next request on. False if it was already revoked."""
    return key.revoke()


def authenticate_api_key(raw_key: str) -> ApiKey:
    """The usable key matching `raw_key` (with its user loaded), its use recorded.

    Unknown, malformed, revoked and expired keys and keys of inactive users all give the
    same Unauthenticated("Invalid API key").
    """
    prefix = parse_prefix(raw_key)
    key = (
        ApiKey.objects.select_related("user").filter(key_prefix=prefix).first() if prefix else None
    )
    if key is None or not key.matches(raw_key) or not key.is_usable or not key.user.is_active:
        raise Unauthenticated("Invalid API key", code="invalid_api_key")
    key.mark_used()
    return key
