"""The REST API at /api/v1/ (canonical) and /api/ (compatibility, not in the schema)."""

from django.urls import include, path

from aimos import compat, health

urlpatterns = [
    path("health", health.health, name="health"),
    path("", include("accounts.urls")),
    path("", include("agents.urls")),
    *compat.api_aliases,
]
