"""System endpoints: status, metrics samples, Prometheus metrics (and the scrape at /metrics).

Who sees what: any authenticated user reads the status, the samples and the Prometheus
metrics. Health, queues, workers, host samples and Prometheus figures are the platform's,
the same for everyone (Prometheus labels executions by agent id, never by name); the
status's agent counts and last execution are the caller's own, everyone's for an admin.

`/metrics` (top level, not in the schema) is for Prometheus: with AIMOS_METRICS_TOKEN set it
wants `Authorization: Bearer <token>`; without one it answers only loopback clients (the
address the throttles see, honouring NUM_PROXIES) and staff signed in to the dashboard.
"""

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from aimos import prometheus, system
from aimos.models import MetricSample
from core.errors import error_body, error_responses


class ChecksSerializer(serializers.Serializer):
    database = serializers.CharField(help_text="`ok` or `error: …`")
    redis = serializers.CharField(help_text="`ok` or `error: …`")
    workers = serializers.CharField(help_text="`ok` when at least one RQ worker is alive")


class QueuesSerializer(serializers.Serializer):
    builds = serializers.IntegerField(allow_null=True)
    runs = serializers.IntegerField(allow_null=True)
    default = serializers.IntegerField(allow_null=True)


class WorkersSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    names = serializers.ListField(child=serializers.CharField())


class SandboxSerializer(serializers.Serializer):
    backend = serializers.ChoiceField(choices=["process", "docker"], help_text="AIMOS_SANDBOX")
    available = serializers.BooleanField(
        help_text="Whether this host can build versions and run agents in it"
    )
    reason = serializers.CharField(allow_null=True, help_text="Why not; null when available")
    fix = serializers.CharField(
        allow_null=True,
        help_text="The command that makes it available (null when available or none would)",
    )


class SystemStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy", "degraded", "unhealthy"])
    uptime_seconds = serializers.IntegerField(help_text="Since the answering web process started")
    version = serializers.CharField()
    environment = serializers.CharField()
    total_agents = serializers.IntegerField(help_text="The caller's agents (an admin: all)")
    active_agents = serializers.IntegerField(help_text="Of those, the ready ones")
    system_health_score = serializers.FloatField(min_value=0, max_value=1)
    last_execution = serializers.DateTimeField(
        allow_null=True, help_text="When the caller's newest execution was created"
    )
    checks = ChecksSerializer()
    queues = QueuesSerializer(help_text="Jobs waiting per queue; null when Redis is down")
    workers = WorkersSerializer()
    sandbox = SandboxSerializer(help_text="The configured sandbox, as the answering host sees it")


class MetricSampleSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricSample
        fields = [
            "timestamp",
            "cpu_usage",
            "memory_usage",
            "disk_usage",
            "network_io",
            "active_agents_count",
            "system_health_score",
        ]
        extra_kwargs = {
            "cpu_usage": {"help_text": "Percent of all CPUs"},
            "memory_usage": {"help_text": "Percent of memory in use"},
            "disk_usage": {"help_text": "Percent used of the disk holding AIMOS's state"},
            "network_io": {"help_text": "Kilobytes per second, sent plus received"},
        }


class MetricsQuerySerializer(serializers.Serializer):
    hours = serializers.IntegerField(min_value=1, max_value=720, default=24)


@extend_schema(
    tags=["system"],
    summary="System status",
    responses={200: SystemStatusSerializer, **error_responses(401, 429)},
)
@api_view(["GET"])
def system_status(request):
    """Health, uptime, version, queues, workers, the sandbox, and the caller's agent counts.

    `sandbox.available` is false when this host cannot run the configured sandbox (builds and
    runs then fail); `reason` says what is missing and `fix` the command that installs it.
    """
    return Response(SystemStatusSerializer(system.system_status(request.user)).data)


@extend_schema(
    tags=["system"],
    summary="Metrics samples",
    parameters=[MetricsQuerySerializer],
    responses={200: MetricSampleSerializer(many=True), **error_responses(400, 401, 429)},
)
@api_view(["GET"])
def system_metrics(request):
    """Host samples of the last `hours` hours (1-720), oldest first, one a minute by default.

    Samples are taken by the workers and kept AIMOS_METRICS_RETENTION_HOURS hours.
    """
    query = MetricsQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    samples = system.samples_since(query.validated_data["hours"])
    return Response(MetricSampleSerializer(samples, many=True).data)


class IgnoreAccept(BaseContentNegotiation):
    """Prometheus asks for text formats: errors stay JSON, the metrics pick their own format."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _metrics_response(request) -> HttpResponse:
    body, content_type = prometheus.exposition(request.headers.get("Accept"))
    return HttpResponse(body, content_type=content_type)


class PrometheusMetricsView(APIView):
    content_negotiation_class = IgnoreAccept

    @extend_schema(
        tags=["system"],
        summary="Prometheus metrics",
        responses={
            (200, "text/plain"): OpenApiResponse(
                OpenApiTypes.STR, description="Prometheus text format (OpenMetrics when asked)"
            ),
            **error_responses(401, 429),
        },
    )
    def get(self, request):
        """Every `aimos_*` metric, computed from the database and Redis when asked."""
        return _metrics_response(request)


def _from_loopback(request) -> bool:
    """Whether the client is this host, by the address the throttles count it under."""
    try:
        return ipaddress.ip_address(BaseThrottle().get_ident(request).strip()).is_loopback
    except ValueError:
        return False


@require_safe
def metrics(request):
    """The Prometheus scrape: with `Authorization: Bearer <AIMOS_METRICS_TOKEN>`, or, with no
    token configured, for loopback clients and staff only."""
    token = settings.AIMOS_METRICS_TOKEN
    if not token:
        user = getattr(request, "user", None)
        if not (_from_loopback(request) or (user is not None and user.is_staff)):
            return HttpResponse(
                "Forbidden: /metrics answers loopback clients and staff only unless "
                "AIMOS_METRICS_TOKEN is set.\n",
                status=403,
                content_type="text/plain; charset=utf-8",
            )
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            response = JsonResponse(
                error_body("A valid metrics token is required.", "not_authenticated"),
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return _metrics_response(request)
