"""Operators' view of runs: read everything, control runs through the same services as the API.

Nothing here edits a run's record: executions are started through the API and change only
through their transitions, so every page is read-only and the actions call the services.
"""

import json

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from core.errors import ServiceError
from executions import control
from executions.models import Batch, Checkpoint, Execution, ExecutionEvent

RECENT_EVENTS = 200


def _short_json(value, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Pages to read (Django's view-only mode): every field is shown, none is editable."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class CheckpointInline(ReadOnlyInline):
    model = Checkpoint
    fields = ["seq", "label", "created_at", "state_preview"]
    readonly_fields = fields
    show_change_link = True
    ordering = ["seq"]

    @admin.display(description="state")
    def state_preview(self, checkpoint):
        return _short_json(checkpoint.state)


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "version",
        "user",
        "status",
        "error_type",
        "created_at",
        "duration_ms",
        "last_seq",
    ]
    list_filter = ["status", "error_type", "agent"]
    search_fields = ["agent__name", "user__username", "user__email", "error_message"]
    date_hierarchy = "created_at"
    list_select_related = ["agent", "version", "user"]
    readonly_fields = ["recent_events"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "agent",
                    "version",
                    "user",
                    "batch",
                    "parent",
                    "source_checkpoint",
                    "status",
                    "error_type",
                    "control",
                ]
            },
        ),
        ("Data", {"fields": ["input", "initial_state", "env", "output", "error_message"]}),
        (
            "Timing",
            {
                "fields": [
                    "timeout_seconds",
                    "created_at",
                    "started_at",
                    "paused_at",
                    "finished_at",
                    "duration_ms",
                    "cpu_ms",
                    "peak_memory_mb",
                ]
            },
        ),
        (
            "Worker",
            {"fields": ["worker", "attempt", "sandbox_started", "lease_expires_at", "last_seq"]},
        ),
        ("Events", {"fields": ["recent_events"]}),
    ]
    inlines = [CheckpointInline]
    actions = ["cancel_runs", "pause_runs", "resume_runs"]

    @admin.display(description=f"last {RECENT_EVENTS} events")
    def recent_events(self, execution):
        events = list(execution.events.order_by("-seq")[:RECENT_EVENTS])[::-1]
        if not events:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (
                    event.seq,
                    event.type,
                    f"{event.timestamp:%H:%M:%S.%f}"[:-3],
                    _short_json(event.data),
                )
                for event in events
            ),
        )
        return format_html(
            "<table><thead><tr><th>seq</th><th>type</th><th>time</th><th>data</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    def _control(self, request, queryset, use_case, done: str) -> None:
        for execution in queryset.select_related("agent", "version"):
            try:
                execution = use_case(execution)
            except ServiceError as exc:
                self.message_user(request, f"{execution.pk}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(
                    request, f"{execution.pk}: {done} ({execution.status}).", messages.SUCCESS
                )

    @admin.action(description="Cancel the selected executions")
    def cancel_runs(self, request, queryset):
        # Don't hold the page while a worker kills a run: the list shows when it has ended.
        self._control(
            request,
            queryset,
            lambda execution: control.cancel_execution(execution, wait=0),
            "cancel requested",
        )

    @admin.action(description="Pause the selected executions")
    def pause_runs(self, request, queryset):
        self._control(
            request,
            queryset,
            lambda execution: control.pause_execution(execution, wait=0),
            "pause requested",
        )

    @admin.action(description="Resume the selected executions")
    def resume_runs(self, request, queryset):
        self._control(
            request,
            queryset,
            lambda execution: control.resume_execution(execution, wait=0),
            "resume requested",
        )


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "execution", "seq", "created_at"]
    search_fields = ["label"]
    date_hierarchy = "created_at"
    list_select_related = ["execution"]


class BatchExecutionInline(ReadOnlyInline):
    model = Execution
    fk_name = "batch"
    fields = ["agent", "version", "status", "error_type", "created_at", "duration_ms"]
    readonly_fields = fields
    show_change_link = True
    ordering = ["created_at"]


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "parallel", "timeout_seconds", "created_at"]
    list_filter = ["parallel"]
    search_fields = ["user__username", "user__email"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    inlines = [BatchExecutionInline]


@admin.register(ExecutionEvent)
class ExecutionEventAdmin(ReadOnlyAdmin):
    list_display = ["execution", "seq", "type", "timestamp"]
    list_filter = ["type"]
    date_hierarchy = "timestamp"
    list_select_related = ["execution"]
    # The event table grows fastest of all: no full count on every page.
    show_full_result_count = False
