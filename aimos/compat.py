"""Paths of the reference platforms, served as thin aliases of the canonical views.

`api_aliases` are included with the canonical API, so they answer under /api/v1/ and
/api/; the whole canonical API is also served under /api/ without `v1`. None of them is in
the OpenAPI schema (see `aimos.schema.only_canonical_paths`).
"""

from django.urls import include, path

from agents import api as agents_api
from aimos.routers import route

ID = r"(?P<{}>[^/.]+)"

api_aliases = [
    # Anymind: upload a version; an agent's log.
    route(
        "uploads/agent/" + ID.format("agent_pk"),
        agents_api.VersionViewSet.as_view({"post": "create"}),
        "compat-upload",
    ),
    route(
        "logs/" + ID.format("pk"),
        agents_api.AgentViewSet.as_view({"get": "logs"}),
        "compat-agent-logs",
    ),
]

ALIAS_CALLBACKS = {pattern.callback for pattern in api_aliases}

urlpatterns = [
    path("api/", include(("aimos.api_urls", "api"), namespace="compat")),
]
