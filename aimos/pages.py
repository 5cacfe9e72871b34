"""Every page of the dashboard, at the site root (the API lives under /api/, the admin under
/admin/). The views are in each app's `views.py`; they change things only through the
services the API calls."""

from django.urls import include, path

from accounts import views as accounts
from agents import views as agents
from aimos import views as overview
from executions import views as executions
from notifications import views as notifications

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("login/", accounts.LoginView.as_view(), name="login"),
    path("logout/", accounts.LogoutView.as_view(), name="logout"),
    # Agents and their versions.
    path("agents/", agents.agent_list, name="agent-list"),
    path("agents/new/", agents.agent_create, name="agent-create"),
    path("agents/<uuid:agent_id>/", agents.agent_detail, name="agent-detail"),
    path("agents/<uuid:agent_id>/archive/", agents.agent_archive, name="agent-archive"),
    path("agents/<uuid:agent_id>/run/", agents.agent_run, name="agent-run"),
    path("agents/<uuid:agent_id>/upload/", agents.version_upload, name="version-upload"),
    path(
        "agents/<uuid:agent_id>/versions/<int:number>/build/",
        agents.version_build,
        name="version-build",
    ),
    path(
        "agents/<uuid:agent_id>/versions/<int:number>/rebuild/",
        agents.version_rebuild,
        name="version-rebuild",
    ),
    # Executions, their controls and checkpoints.
    path("executions/", executions.execution_list, name="execution-list"),
    path("executions/<uuid:execution_id>/", executions.execution_detail, name="execution-detail"),
    path(
        "executions/<uuid:execution_id>/pause/",
        executions.execution_pause,
        name="execution-pause",
    ),
    path(
        "executions/<uuid:execution_id>/resume/",
        executions.execution_resume,
        name="execution-resume",
    ),
    path(
        "executions/<uuid:execution_id>/cancel/",
        executions.execution_cancel,
        name="execution-cancel",
    ),
    path(
        "checkpoints/<uuid:checkpoint_id>/restore/",
        executions.checkpoint_restore,
        name="checkpoint-restore",
    ),
    path(
        "checkpoints/<uuid:checkpoint_id>/fork/",
        executions.checkpoint_fork,
        name="checkpoint-fork",
    ),
    # Sessions: long-lived sandboxes with a workspace (`workspaces.page_urls`).
    path("", include("workspaces.page_urls")),
    # Webhooks and their deliveries.
    path("webhooks/", notifications.webhook_list, name="webhook-list"),
    path("webhooks/<uuid:webhook_id>/", notifications.webhook_detail, name="webhook-detail"),
    path("webhooks/<uuid:webhook_id>/toggle/", notifications.webhook_toggle, name="webhook-toggle"),
    path(
        "webhooks/<uuid:webhook_id>/deliveries/<str:delivery_id>/redeliver/",
        notifications.delivery_redeliver,
        name="delivery-redeliver",
    ),
    # Credentials.
    path("api-keys/", accounts.api_keys, name="api-keys"),
    path("api-keys/<uuid:key_id>/revoke/", accounts.revoke_api_key, name="api-key-revoke"),
]
