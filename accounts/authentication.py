"""How an API request says who it is, tried in this order (see REST_FRAMEWORK in settings):

1. `X-API-Key: aimos_<prefix>_<secret>`
2. `Authorization: Bearer <JWT access token>`
3. the dashboard's session cookie, with DRF's CSRF check.

A credential that is present but wrong is a 401 at once; the next method is not tried.
"""

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.authentication import SessionAuthentication as SessionAuthentication
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import InvalidToken

from accounts import services
from core.errors import WWW_AUTHENTICATE, Unauthenticated

__all__ = ["ApiKeyAuthentication", "BearerTokenAuthentication", "SessionAuthentication"]

API_KEY_HEADER = "HTTP_X_API_KEY"


class ApiKeyAuthentication(BaseAuthentication):
    """`request.user` is the key's owner and `request.auth` the ApiKey."""

    def authenticate(self, request):
        raw_key = request.META.get(API_KEY_HEADER)
        if raw_key is None:
            return None
        try:
            key = services.authenticate_api_key(raw_key.strip())
        except Unauthenticated as exc:
            raise exceptions.AuthenticationFailed(exc.detail, code=exc.code) from None
        return key.user, key

    def authenticate_header(self, request):
        # DRF answers 403 instead of 401 when the first authenticator offers no challenge.
        return WWW_AUTHENTICATE


class BearerTokenAuthentication(JWTAuthentication):
    """simplejwt access tokens (a refresh token is refused), minus those revoked at logout."""

    def get_validated_token(self, raw_token):
        try:
            token = super().get_validated_token(raw_token)
        except InvalidToken:
            raise exceptions.AuthenticationFailed(
                "Invalid or expired token", code="token_not_valid"
            ) from None
        if services.is_access_token_revoked(token):
            raise exceptions.AuthenticationFailed("Token has been revoked", code="token_revoked")
        return token

    def get_user(self, validated_token):
        try:
            return super().get_user(validated_token)
        except InvalidToken:
            raise exceptions.AuthenticationFailed(
                "Invalid or expired token", code="token_not_valid"
            ) from None
