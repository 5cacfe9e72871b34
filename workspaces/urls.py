"""Sessions routes, included by `aimos.api_urls` (so served under /api/v1/ and, for Crogia's
clients, /api/)."""

from core.routers import OptionalSlashRouter, route
from workspaces import api, tasks

router = OptionalSlashRouter()
router.register("sessions", api.SessionViewSet, basename="session")

urlpatterns = [
    *router.urls,
    route(
        r"sessions/(?P<pk>[^/.]+)/tasks",
        tasks.SessionTaskViewSet.as_view({"get": "list", "post": "create"}),
        "session-tasks",
    ),
]
