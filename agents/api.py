"""Agents API: agents, their versions (uploads and builds) and their log."""

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from agents import services
from agents.choices import AgentStatus, LogLevel, LogSource
from agents.manifest import NAME_RE
from agents.models import Agent, AgentLog, AgentVersion, clean_tags, validate_name
from core.errors import NotFound, ServiceError
from core.errors import error_responses as errors

# --- Serializers ---------------------------------------------------------------------------------


@extend_schema_field({"type": "string", "pattern": f"^{NAME_RE.pattern}$", "maxLength": 64})
class AgentNameField(serializers.SlugField):
    """An agent's name; in the schema, the rule `validate_name` checks."""


@extend_schema_field({"type": "string", "pattern": r"^\s*[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\s*$"})
class TagField(serializers.CharField):
    """A tag; in the schema, the rule `clean_tags` checks (after stripping and lowercasing)."""


class AgentSerializer(serializers.ModelSerializer):
    name = AgentNameField(max_length=64)
    user_id = serializers.UUIDField(source="owner_id", read_only=True)
    current_version_id = serializers.UUIDField(read_only=True, allow_null=True)
    current_version = serializers.SerializerMethodField()
    status = serializers.ChoiceField(
        choices=AgentStatus.choices,
        required=False,
        help_text="Only `archived` (archive) or another value on an archived agent (restore).",
    )
    tags = serializers.ListField(child=TagField(max_length=32), required=False, max_length=20)
    total_executions = serializers.IntegerField(read_only=True)
    successful_executions = serializers.IntegerField(read_only=True)
    success_rate = serializers.FloatField(
        read_only=True, help_text="Percent of the runs that completed (0.0 before any run)."
    )
    last_execution = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="When the newest run was created."
    )

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "description",
            "role",
            "tags",
            "status",
            "user_id",
            "current_version_id",
            "current_version",
            "total_executions",
            "successful_executions",
            "success_rate",
            "last_execution",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def get_current_version(self, agent) -> str | None:
        return agent.current_version.label if agent.current_version_id else None

    def validate_name(self, value: str) -> str:
        return validate_name(value)

    def validate_tags(self, value: list[str]) -> list[str]:
        return clean_tags(value)


class NewAgentSerializer(AgentSerializer):
    """What POST /agents takes: a new agent is a draft, so it has no `status` to set."""

    class Meta(AgentSerializer.Meta):
        fields = [name for name in AgentSerializer.Meta.fields if name != "status"]


class AgentVersionSerializer(serializers.ModelSerializer):
    agent_id = serializers.UUIDField(read_only=True)
    version = serializers.CharField(source="label", read_only=True)

    class Meta:
        model = AgentVersion
        fields = [
            "id",
            "agent_id",
            "number",
            "version",
            "status",
            "artifact_sha256",
            "artifact_size",
            "manifest",
            "entrypoint",
            "build_log",
            "created_at",
            "updated_at",
            "build_started_at",
            "build_finished_at",
        ]
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The agent package: a .tar.gz with aimos.yaml.")


class AgentLogSerializer(serializers.ModelSerializer):
    class Meta:
        model = AgentLog
        fields = ["timestamp", "level", "message", "source", "metadata"]
        read_only_fields = fields


# --- Views -------------------------------------------------------------------------------------


AGENT_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
AGENT_PK = OpenApiParameter("agent_pk", OpenApiTypes.UUID, OpenApiParameter.PATH)
VERSION_NUMBER = OpenApiParameter(
    "number", OpenApiTypes.STR, OpenApiParameter.PATH, description="1, 2, … or v1, v2, …"
)


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=[c for c, _ in AgentStatus.choices]),
            OpenApiParameter("tag", OpenApiTypes.STR),
            OpenApiParameter("search", OpenApiTypes.STR, description="In name, description, role."),
        ],
        responses={200: AgentSerializer(many=True), **errors(400, 401)},
    ),
    create=extend_schema(
        request=NewAgentSerializer, responses={201: AgentSerializer, **errors(400, 401)}
    ),
    retrieve=extend_schema(
        parameters=[AGENT_ID], responses={200: AgentSerializer, **errors(401, 404)}
    ),
    update=extend_schema(
        parameters=[AGENT_ID], responses={200: AgentSerializer, **errors(400, 401, 404)}
    ),
    partial_update=extend_schema(
        parameters=[AGENT_ID], responses={200: AgentSerializer, **errors(400, 401, 404)}
    ),
    destroy=extend_schema(
        parameters=[AGENT_ID],
        responses={204: OpenApiResponse(description="Deleted."), **errors(401, 404, 409)},
    ),
)
class AgentViewSet(viewsets.ModelViewSet):
    """The caller's agents (an admin sees everyone's)."""

    serializer_class = AgentSerializer

    def get_queryset(self):
        agents = (
            Agent.objects.for_user(self.request.user)
            .select_related("current_version")
            .with_execution_stats()
        )
        params = self.request.query_params
        if params.get("status"):
            agents = agents.filter(status=AgentStatus.named(params["status"]))
        if params.get("tag"):
            agents = agents.with_tag(params["tag"])
        if params.get("search"):
            agents = agents.search(params["search"])
        return agents.order_by("-created_at")

    def get_object(self):
        return services.access_agent(self.request.user, self.kwargs["pk"], with_stats=True)

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        if data.pop("status", None) not in (None, AgentStatus.DRAFT):
            raise ServiceError.invalid(
                "status",
                "Cannot be set when creating an agent.",
                detail="The status of a new agent is draft",
            )
        agent = services.create_agent(self.request.user, **data)
        serializer.instance = services.access_agent(self.request.user, agent.pk, with_stats=True)

    def perform_update(self, serializer):
        serializer.instance = services.update_agent(
            serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        services.delete_agent(instance)

    @extend_schema(
        parameters=[
            AGENT_ID,
            OpenApiParameter("source", OpenApiTypes.STR, enum=[c for c, _ in LogSource.choices]),
            OpenApiParameter("level", OpenApiTypes.STR, enum=[c for c, _ in LogLevel.choices]),
        ],
        responses={200: AgentLogSerializer(many=True), **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get"], serializer_class=AgentLogSerializer)
    def logs(self, request, pk=None):
        """Build and runtime log entries of the agent, oldest first."""
        agent = self.get_object()
        entries = agent.logs.all()
        if request.query_params.get("source"):
            entries = entries.filter(source=request.query_params["source"])
        if request.query_params.get("level"):
            entries = entries.filter(level=request.query_params["level"].upper())
        page = self.paginate_queryset(entries)
        return self.get_paginated_response(AgentLogSerializer(page, many=True).data)


class VersionViewSet(viewsets.GenericViewSet):
    """Versions of one agent: each upload of a .tar.gz is a new version built in the background."""

    serializer_class = AgentVersionSerializer
    parser_classes = [MultiPartParser, FormParser]
    lookup_field = "number"

    def agent(self) -> Agent:
        return services.access_agent(self.request.user, self.kwargs["agent_pk"])

    def get_queryset(self):
        return self.agent().versions.select_related("agent").order_by("number")

    def get_object(self):
        return services.access_version(self.agent(), self.kwargs["number"])

    @extend_schema(
        parameters=[AGENT_PK],
        responses={200: AgentVersionSerializer(many=True), **errors(400, 401, 404)},
    )
    def list(self, request, agent_pk=None):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        parameters=[AGENT_PK],
        request={"multipart/form-data": UploadSerializer},
        responses={201: AgentVersionSerializer, **errors(400, 401, 404, 409, 413)},
    )
    def create(self, request, agent_pk=None):
        """Upload a new version (multipart `file`); it is queued to build."""
        version = upload_version(request, self.agent())
        return Response(self.get_serializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[AGENT_PK, VERSION_NUMBER],
        responses={200: AgentVersionSerializer, **errors(401, 404)},
    )
    def retrieve(self, request, agent_pk=None, number=None):
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        parameters=[AGENT_PK, VERSION_NUMBER],
        request=None,
        responses={202: AgentVersionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def rebuild(self, request, agent_pk=None, number=None):
        """Build the same artifact again."""
        version = services.rebuild_version(self.get_object())
        return Response(self.get_serializer(version).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[AGENT_PK, VERSION_NUMBER],
        responses={(200, "application/gzip"): OpenApiTypes.BINARY, **errors(401, 404)},
    )
    @action(detail=True, methods=["get"])
    def artifact(self, request, agent_pk=None, number=None):
        """Download the uploaded archive of this version."""
        version = self.get_object()
        if version.agent.owner_id != request.user.pk:
            raise NotFound("Version not found")
        name = f"{version.agent.name}-{version.label}.tar.gz"
        return FileResponse(
            version.artifact_path.open("rb"),
            as_attachment=True,
            filename=name,
            content_type="application/gzip",
        )


def upload_version(request, agent: Agent) -> AgentVersion:
    """Refuse an oversized body before reading it, then hand the file to the service."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    # The multipart envelope adds a little on top of the file itself.
    services.check_upload_size(max(0, length - 64 * 1024) or None)
    serializer = UploadSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return services.create_version(agent, serializer.validated_data["file"])
