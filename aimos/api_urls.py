"""The REST API, served at /api/v1/ (canonical) and /api/ (compatibility, not in the schema)."""

from django.urls import include, path

from aimos import health

urlpatterns = [
    path("health", health.health, name="health"),
    path("", include("accounts.urls")),
]
