"""Paths of the reference platforms, served as thin aliases of the canonical views.

`api_aliases` are included with the canonical API, so they answer under /api/v1/ and
/api/; the whole canonical API is also served under /api/ without `v1`. None of them is in
the OpenAPI schema (see `aimos.schema.only_canonical_paths`).

Crogia's sessions (`/api/sessions…`: files, search, shell, processes) need no alias here:
its paths are the canonical ones (`workspaces.urls`) without `v1`, served by that mirror.
"""

from django.urls import include, path

from agents import api as agents_api
from core.routers import route
from executions import compat as runs
from executions.api import ExecutionViewSet

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
    route(
        "logs/executions/" + ID.format("pk") + "/logs",
        ExecutionViewSet.as_view({"get": "logs"}),
        "compat-execution-logs",
    ),
    # Oasis: workflows are executions.
    route("workflow/execute", runs.WorkflowViewSet.as_view({"post": "execute"}), "compat-workflow"),
    route(
        "workflow/active",
        runs.WorkflowViewSet.as_view({"get": "active"}),
        "compat-workflow-active",
    ),
    route(
        "workflow/" + ID.format("pk") + "/status",
        runs.WorkflowViewSet.as_view({"get": "workflow_status"}),
        "compat-workflow-status",
    ),
    route(
        "workflow/" + ID.format("pk"),
        runs.WorkflowViewSet.as_view({"delete": "cancel"}),
        "compat-workflow-cancel",
    ),
    # Agio: runs are executions.
    *[
        route(
            "runs/" + ID.format("pk") + f"/{control}",
            ExecutionViewSet.as_view({"post": control}),
            f"compat-run-{control}",
        )
        for control in ("pause", "resume", "cancel")
    ],
    route(
        "checkpoints/runs/" + ID.format("pk") + "/checkpoints",
        ExecutionViewSet.as_view({"get": "checkpoints"}),
        "compat-run-checkpoints",
    ),
    # Anymind: the runtime, answering with its execution shape.
    route(
        "runtime/executions",
        runs.RuntimeExecutionViewSet.as_view({"get": "list"}),
        "compat-runtime-list",
    ),
    route(
        "runtime/executions/" + ID.format("pk"),
        runs.RuntimeExecutionViewSet.as_view({"get": "retrieve"}),
        "compat-runtime-detail",
    ),
    route(
        "runtime/executions/" + ID.format("pk") + "/cancel",
        runs.RuntimeExecutionViewSet.as_view({"post": "cancel"}),
        "compat-runtime-cancel",
    ),
    route(
        "runtime/" + ID.format("agent_pk") + "/execute",
        runs.RuntimeExecutionViewSet.as_view({"post": "run_agent"}),
        "compat-runtime-execute",
    ),
]

ALIAS_CALLBACKS = {pattern.callback for pattern in api_aliases}

urlpatterns = [
    path("api/", include(("aimos.api_urls", "api"), namespace="compat")),
]
