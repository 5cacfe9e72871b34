"""Accounts routes, included by `aimos.api_urls` (so served under /api/v1/ and /api/)."""

from accounts import api
from core.routers import OptionalSlashRouter, route

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
