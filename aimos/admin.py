from django.contrib import admin

from aimos.models import MetricSample


@admin.register(MetricSample)
class MetricSampleAdmin(admin.ModelAdmin):
    """Samples are written by the workers; the admin only reads them."""

    list_display = [
        "timestamp",
        "host",
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "network_io",
        "active_agents_count",
        "system_health_score",
    ]
    list_filter = ["host"]
    date_hierarchy = "timestamp"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
