"""Agents routes, included by `aimos.api_urls` (so served under /api/v1/ and /api/)."""

from agents import api
from core.routers import OptionalSlashRouter, route

router = OptionalSlashRouter()
router.register("agents", api.AgentViewSet, basename="agent")

AGENT = r"agents/(?P<agent_pk>[^/.]+)/versions"
VERSION = AGENT + r"/(?P<number>[^/.]+)"

urlpatterns = [
    route(
        AGENT, api.VersionViewSet.as_view({"get": "list", "post": "create"}), "agent-version-list"
    ),
    route(VERSION, api.VersionViewSet.as_view({"get": "retrieve"}), "agent-version-detail"),
    route(
        VERSION + "/rebuild",
        api.VersionViewSet.as_view({"post": "rebuild"}),
        "agent-version-rebuild",
    ),
    route(
        VERSION + "/artifact",
        api.VersionViewSet.as_view({"get": "artifact"}),
        "agent-version-artifact",
    ),
    *router.urls,
]
