"""Accounts routes, included by `aimos.api_urls` (so served under /api/v1/ and /api/)."""

from django.urls import re_path
from rest_framework.routers import SimpleRouter

from accounts import api

# Paths are canonical without a trailing slash (as the reference clients call them) and
# accept one. Written `(?:/)?` rather than `/?` so the OpenAPI paths come out without it.
OPTIONAL_SLASH = "(?:/)?"


class OptionalSlashRouter(SimpleRouter):
    def __init__(self):
        super().__init__()
        self.trailing_slash = OPTIONAL_SLASH


def route(path: str, view, name: str):
    return re_path(rf"^{path}{OPTIONAL_SLASH}$", view, name=name)


router = OptionalSlashRouter()
router.register("api-keys", api.ApiKeyViewSet, basename="api-key")

urlpatterns = [
    route("auth/register", api.RegisterView.as_view(), "auth-register"),
    route("auth/login", api.LoginView.as_view(), "auth-login"),
    route("auth/refresh", api.RefreshView.as_view(), "auth-refresh"),
    route("auth/logout", api.LogoutView.as_view(), "auth-logout"),
    route("auth/me", api.MeView.as_view(), "auth-me"),
    *router.urls,
]
