"""Executions routes, included by `aimos.api_urls` (so served under /api/v1/ and /api/)."""

from core.routers import OptionalSlashRouter, route
from executions import api

router = OptionalSlashRouter()
router.register("executions", api.ExecutionViewSet, basename="execution")
router.register("checkpoints", api.CheckpointViewSet, basename="checkpoint")
router.register("batches", api.BatchViewSet, basename="batch")

urlpatterns = [
    route(
        r"agents/(?P<agent_pk>[^/.]+)/execute",
        api.ExecutionViewSet.as_view({"post": "run_agent"}),
        "agent-execute",
    ),
    route("execute", api.BatchViewSet.as_view({"post": "start"}), "batch-start"),
    route("chat", api.ChatViewSet.as_view({"post": "chat"}), "chat"),
    *router.urls,
]
