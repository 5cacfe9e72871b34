"""The REST API at /api/v1/ (canonical) and /api/ (compatibility, not in the schema)."""

from django.urls import include, path

from aimos import api as system_api
from aimos import compat, health
from core.routers import route

urlpatterns = [
    path("health", health.health, name="health"),
    route("system/status", system_api.system_status, "system-status"),
    route("system/metrics", system_api.system_metrics, "system-metrics"),
    route(
        "system/metrics/prometheus",
        system_api.PrometheusMetricsView.as_view(),
        "system-metrics-prometheus",
    ),
    path("", include("accounts.urls")),
    path("", include("agents.urls")),
    path("", include("executions.urls")),
    path("", include("notifications.urls")),
    path("", include("workspaces.urls")),
    *compat.api_aliases,
]
