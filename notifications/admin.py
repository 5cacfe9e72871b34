"""Operators' view of webhooks and their deliveries; redelivery goes through the service the
API and the dashboard call, so a delivery still pending is refused here too."""

from django.contrib import admin, messages
from django.db import models

from core.errors import ServiceError
from notifications import services
from notifications.models import Webhook, WebhookDelivery


class DeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ["id", "event", "status", "attempts", "response_status", "error", "created_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    show_change_link = True
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    list_display = ["url", "user", "events", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["url", "description", "user__username"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    # The signing secret is never shown.
    fields = ["id", "user", "url", "events", "description", "is_active", "created_at"]
    readonly_fields = ["id", "user", "created_at"]
    inlines = [DeliveryInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def has_add_permission(self, request):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Read-only (Django's view-only mode), with one action: redeliver."""

    list_display = ["id", "webhook", "event", "status", "attempts", "response_status", "created_at"]
    list_filter = ["status", "event"]
    search_fields = ["id", "webhook__url"]
    date_hierarchy = "created_at"
    list_select_related = ["webhook"]
    actions = ["redeliver"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Redeliver the selected deliveries")
    def redeliver(self, request, queryset):
        queued, refused = 0, []
        for delivery in queryset:
            try:
                services.redeliver(delivery)
            except ServiceError as exc:
                refused.append(f"{delivery.pk}: {exc.detail}")
            else:
                queued += 1
        if queued:
            self.message_user(request, f"Queued {queued} redelivery(ies).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not redelivered: " + " ".join(refused), messages.ERROR)
