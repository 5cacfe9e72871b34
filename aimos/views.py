"""The dashboard's overview: the platform's status, the metrics chart, recent runs, and the
user's live feed (`/ws/events/`, followed by `static/js/overview.js`)."""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.shortcuts import render
from django.utils import timezone

from aimos import charts, system
from executions.choices import ExecutionStatus
from executions.models import Execution

RANGES = (1, 6, 24, 168)


@login_required
def overview(request):
    try:
        hours = int(request.GET.get("hours", 24))
    except ValueError:
        hours = 24
    if hours not in RANGES:
        hours = 24
    status = system.system_status(request.user)
    now = timezone.now()
    runs = Execution.objects.for_user(request.user)
    day = runs.filter(created_at__gte=now - timedelta(hours=24)).aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=ExecutionStatus.COMPLETED)),
        finished=Count("id", filter=Q(status__in=ExecutionStatus.terminal())),
    )
    samples = list(
        system.samples_since(hours).values("timestamp", "cpu_usage", "memory_usage", "disk_usage")
    )
    chart = charts.percent_chart(
        samples,
        [
            ("cpu_usage", "CPU", "cpu"),
            ("memory_usage", "Memory", "memory"),
            ("disk_usage", "Disk", "disk"),
        ],
        start=now - timedelta(hours=hours),
        end=now,
        gap=timedelta(seconds=settings.AIMOS_METRICS_SAMPLE_SECONDS * 3),
    )
    return render(
        request,
        "aimos/overview.html",
        {
            "status": status,
            "active_runs": runs.active().count(),
            "day": day,
            "day_success": round(100 * day["completed"] / day["finished"])
            if day["finished"]
            else None,
            "recent": runs.select_related("agent", "version").order_by("-created_at")[:8],
            "chart": chart,
            "hours": hours,
            "ranges": RANGES,
        },
    )
