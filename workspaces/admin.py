"""Operators' view of sessions: read everything; stop and delete through the same services as
the API. Nothing here edits a session's record: it changes only through its transitions."""

from django.contrib import admin, messages

from core.errors import ServiceError
from workspaces import services
from workspaces.models import Session


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "owner",
        "agent",
        "status",
        "backend",
        "workspace_mb",
        "workspace_bytes",
        "host",
        "created_at",
        "last_active_at",
        "deleting",
    ]
    list_filter = ["status", "backend", "deleting", "workspace_deleted"]
    search_fields = ["id", "owner__username", "owner__email", "agent__name", "host", "error"]
    date_hierarchy = "created_at"
    list_select_related = ["owner", "agent"]
    fieldsets = [
        (None, {"fields": ["id", "owner", "agent", "version", "backend", "status", "error"]}),
        (
            "Workspace",
            {"fields": ["workspace_mb", "workspace_bytes", "workspace_deleted", "deleting"]},
        ),
        ("Limits", {"fields": ["idle_timeout_seconds", "memory_mb", "cpus", "pids", "network"]}),
        ("Host", {"fields": ["host", "lease_expires_at"]}),
        ("Timing", {"fields": ["created_at", "started_at", "last_active_at", "stopped_at"]}),
    ]
    actions = ["stop_sessions", "delete_sessions"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting the row alone would leave its sandbox and workspace: the action below
        # deletes all of it.
        return False

    def _each(self, request, queryset, use_case, done: str) -> None:
        for session in queryset:
            try:
                outcome = use_case(session)
            except ServiceError as exc:
                self.message_user(request, f"{session.pk}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{session.pk}: {done(outcome)}", messages.SUCCESS)

    @admin.action(description="Stop the selected sessions (their workspaces are kept)")
    def stop_sessions(self, request, queryset):
        # Don't hold the page while a host stops them: the list shows when they have.
        self._each(
            request,
            queryset,
            lambda session: services.stop_session(session, wait=0),
            lambda session: f"stop requested ({session.status}).",
        )

    @admin.action(description="Delete the selected sessions with their workspaces")
    def delete_sessions(self, request, queryset):
        self._each(
            request,
            queryset.filter(deleting=False),
            lambda session: services.delete_session(session, wait=0),
            lambda gone: "deleted." if gone else "deletion requested.",
        )
