"""Executions API: run agents, read runs and their events, control them, checkpoints, batches
and chat. Views validate the request, call one service and render the result."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from agents import services as agents
from agents.models import AgentVersion
from core.errors import ServiceError
from core.errors import error_responses as errors
from executions import batches, control, events, services, streams
from executions.choices import ErrorType, ExecutionStatus
from executions.models import Batch, Checkpoint, Execution, ExecutionEvent

# Reference clients filter with the words of their own platforms.
STATUS_ALIASES = {"success": ExecutionStatus.COMPLETED, "error": ExecutionStatus.FAILED}

EVENTS_DEFAULT_LIMIT = 1000
EVENTS_MAX_LIMIT = 10000

SSE = "text/event-stream"

# --- Serializers ---------------------------------------------------------------------------------


class ExecutionSerializer(serializers.ModelSerializer):
    agent_id = serializers.UUIDField(read_only=True)
    agent_name = serializers.CharField(source="agent.name", read_only=True)
    agent_version_id = serializers.UUIDField(source="version_id", read_only=True)
    version = serializers.CharField(source="version.label", read_only=True)
    user_id = serializers.UUIDField(read_only=True)
    batch_id = serializers.UUIDField(read_only=True, allow_null=True)
    parent_id = serializers.UUIDField(read_only=True, allow_null=True)
    source_checkpoint_id = serializers.UUIDField(read_only=True, allow_null=True)
    session_id = serializers.UUIDField(
        read_only=True,
        allow_null=True,
        help_text="The session whose workspace the run works in (a session's task); null for "
        "a run of its own, or once its session was deleted.",
    )
    input = serializers.JSONField(read_only=True)
    output = serializers.JSONField(read_only=True)
    events = serializers.IntegerField(
        source="last_seq", read_only=True, help_text="How many events the run has (its last seq)."
    )
    error_type = serializers.ChoiceField(
        choices=ErrorType.choices, allow_blank=True, read_only=True
    )

    class Meta:
        model = Execution
        fields = [
            "id",
            "agent_id",
            "agent_name",
            "agent_version_id",
            "version",
            "user_id",
            "batch_id",
            "parent_id",
            "source_checkpoint_id",
            "session_id",
            "status",
            "error_type",
            "input",
            "output",
            "error_message",
            "timeout_seconds",
            "created_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "peak_memory_mb",
            "cpu_ms",
            "attempt",
            "events",
        ]
        read_only_fields = fields


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": r"^v?\d+$"},
        ],
        "description": "A version number (3) or label (v3); the current version when omitted.",
    }
)
class VersionField(serializers.Field):
    def to_internal_value(self, data) -> int:
        number = AgentVersion.number_from_label(data)
        if number is None:
            raise serializers.ValidationError("A version number (3) or label (v3).")
        return number

    def to_representation(self, value):
        return value


class RunRequestSerializer(serializers.Serializer):
    input = serializers.JSONField(
        required=False, allow_null=True, help_text="The agent's payload (any JSON)."
    )
    payload = serializers.JSONField(
        required=False, allow_null=True, write_only=True, help_text="Same as `input`."
    )
    timeout_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    version = VersionField(required=False, allow_null=True)
    wait = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        help_text="Seconds to wait for the end (capped by the server): 201 with the finished "
        "run if it ended by then, else 202 with the run as it is.",
    )

    def validate(self, attrs):
        payload = attrs.pop("payload", None)
        if "input" not in attrs:
            attrs["input"] = payload
        return attrs


class ExecutionCreateSerializer(RunRequestSerializer):
    agent_id = serializers.CharField(help_text="The agent's id, or the name of one of your agents.")


class ExecutionFilterSerializer(serializers.Serializer):
    """The query parameters of the execution lists."""

    agent_id = serializers.UUIDField(required=False)
    agent_version_id = serializers.UUIDField(required=False)
    status = serializers.ChoiceField(
        choices=[*ExecutionStatus.values, *STATUS_ALIASES], required=False
    )
    batch = serializers.UUIDField(required=False, help_text="A batch id.")
    created_after = serializers.DateTimeField(required=False, help_text="ISO 8601.")
    created_before = serializers.DateTimeField(required=False, help_text="ISO 8601.")

    def validate_status(self, value: str) -> str:
        return STATUS_ALIASES.get(value, value)

    @classmethod
    def apply(cls, executions, params):
        given = {name: params[name] for name in cls().fields if params.get(name, "") != ""}
        serializer = cls(data=given)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        return executions.matching(
            status=data.get("status"),
            agent_id=data.get("agent_id"),
            version_id=data.get("agent_version_id"),
            batch_id=data.get("batch"),
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
        )


class EventSerializer(serializers.ModelSerializer):
    """The whole event, as the WebSocket messages carry it."""

    execution_id = serializers.UUIDField()

    class Meta:
        model = ExecutionEvent
        fields = ["seq", "type", "data", "timestamp", "execution_id"]
        read_only_fields = fields

    def to_representation(self, event):
        return event.as_message()


class EventQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(
        required=False,
        min_value=0,
        default=0,
        help_text="Only events with a greater seq (the header Last-Event-ID wins).",
    )
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=EVENTS_MAX_LIMIT, default=EVENTS_DEFAULT_LIMIT
    )


class LogEntrySerializer(serializers.Serializer):
    """A `log` event as an entry of a log: {timestamp, level, message, source, metadata}."""

    timestamp = serializers.DateTimeField()
    level = serializers.SerializerMethodField()
    message = serializers.SerializerMethodField()
    source = serializers.SerializerMethodField()
    metadata = serializers.SerializerMethodField()

    def get_level(self, event) -> str:
        return str(event.data.get("level") or "info").upper()

    def get_message(self, event) -> str:
        return str(event.data.get("message", ""))

    def get_source(self, event) -> str:
        return str(event.data.get("source") or "agent")

    def get_metadata(self, event) -> dict:
        return {"seq": event.seq}


class CheckpointSerializer(serializers.ModelSerializer):
    execution_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Checkpoint
        fields = ["id", "execution_id", "seq", "label", "created_at"]
        read_only_fields = fields


class CheckpointDetailSerializer(CheckpointSerializer):
    state = serializers.JSONField(read_only=True)

    class Meta(CheckpointSerializer.Meta):
        fields = [*CheckpointSerializer.Meta.fields, "state"]
        read_only_fields = fields


def _with_aliases(modifications: dict) -> dict:
    """Agio's `modified_query` is the new input."""
    changes = dict(modifications)
    if "modified_query" in changes:
        changes.setdefault("input", changes["modified_query"])
        del changes["modified_query"]
    return changes


REWIND_REFUSED = (
    "A run cannot be rewound in place: restoring a checkpoint starts a new run from its "
    "state, so create_new_run must be true"
)


class RestoreSerializer(serializers.Serializer):
    create_new_run = serializers.BooleanField(
        default=True, help_text="Must be true: a restore is always a new run."
    )
    modifications = serializers.DictField(
        required=False,
        default=dict,
        help_text='Changes for the new run: {"input": …} (`modified_query` is the same).',
    )

    def validate_modifications(self, value: dict) -> dict:
        return _with_aliases(value)


class ForkSerializer(serializers.Serializer):
    modifications = serializers.DictField(
        required=False,
        default=dict,
        help_text="Changes for the new run: input, version, env, state, timeout_seconds.",
    )

    def validate_modifications(self, value: dict) -> dict:
        changes = _with_aliases(value)
        if "timeout_seconds" in changes:
            changes["timeout_seconds"] = serializers.IntegerField(min_value=1).run_validation(
                changes["timeout_seconds"]
            )
        if "version" in changes:
            changes["version"] = VersionField().run_validation(changes["version"])
        return changes


class BatchRequestSerializer(serializers.Serializer):
    agent_ids = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=100,
        help_text="The agents to run; every ready agent of yours when omitted.",
    )
    parallel = serializers.BooleanField(
        default=True, help_text="All at once, or one after another."
    )
    timeout_seconds = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    input = serializers.JSONField(required=False, allow_null=True)


class BatchStartedSerializer(serializers.Serializer):
    execution_id = serializers.UUIDField(source="id", help_text="The batch id.")
    status = serializers.SerializerMethodField()
    started_at = serializers.DateTimeField(source="created_at")
    agent_count = serializers.SerializerMethodField()
    estimated_duration = serializers.SerializerMethodField(
        help_text="Seconds the batch should take, from the agents' past runs."
    )

    def get_status(self, batch) -> str:
        return "started"

    def get_agent_count(self, batch) -> int:
        return batch.executions.count()

    def get_estimated_duration(self, batch) -> int:
        return batches.estimated_duration(batch)


class BatchSerializer(serializers.ModelSerializer):
    user_id = serializers.UUIDField(read_only=True)
    input = serializers.JSONField(read_only=True)
    status = serializers.SerializerMethodField()
    total = serializers.IntegerField(source="summary.total")
    completed = serializers.IntegerField(source="summary.completed")
    failed = serializers.IntegerField(
        source="summary.failed", help_text="Ended without completing (failed, cancelled, …)."
    )
    active = serializers.IntegerField(source="summary.active")
    finished = serializers.BooleanField(source="summary.finished")
    success_rate = serializers.FloatField(
        source="summary.success_rate", help_text="Percent of the ended runs that completed."
    )
    executions = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "user_id",
            "parallel",
            "input",
            "timeout_seconds",
            "created_at",
            "status",
            "total",
            "completed",
            "failed",
            "active",
            "finished",
            "success_rate",
            "executions",
        ]
        read_only_fields = fields

    def get_status(self, batch) -> str:
        finished = batch.summary["finished"]
        return ExecutionStatus.COMPLETED if finished else ExecutionStatus.RUNNING

    @extend_schema_field(ExecutionSerializer(many=True))
    def get_executions(self, batch):
        runs = batch.executions.select_related("agent", "version").order_by("created_at")
        return ExecutionSerializer(runs, many=True).data


class ChatSerializer(serializers.Serializer):
    agent_id = serializers.CharField(help_text="The agent's id, or the name of one of your agents.")
    message = serializers.JSONField(allow_null=True, help_text="The run's input.")
    stream = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Stream the run's events (SSE); when omitted, an `Accept: text/event-stream` "
        "header asks for the stream.",
    )


class ChatMetricsSerializer(serializers.Serializer):
    duration_ms = serializers.IntegerField(allow_null=True)
    cpu_ms = serializers.IntegerField(allow_null=True)
    peak_memory_mb = serializers.FloatField(allow_null=True)


class ChatResponseSerializer(serializers.Serializer):
    run_id = serializers.UUIDField(source="id")
    response = serializers.JSONField(source="output", help_text="The run's output.")
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    error = serializers.CharField(source="error_message", allow_blank=True)
    error_type = serializers.ChoiceField(choices=ErrorType.choices, allow_blank=True)
    metrics = ChatMetricsSerializer(source="*")


# --- Views -------------------------------------------------------------------------------------


def wants_stream(request) -> bool:
    return SSE in request.headers.get("Accept", "")


def _renderers(view, streaming_actions):
    if getattr(view, "action", None) in streaming_actions:
        return [JSONRenderer(), streams.EventStreamRenderer()]
    return None


EXECUTION_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
CHECKPOINT_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
BATCH_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
AGENT_PK = OpenApiParameter("agent_pk", OpenApiTypes.UUID, OpenApiParameter.PATH)
IDEMPOTENCY_KEY = OpenApiParameter(
    services.IDEMPOTENCY_KEY_HEADER,
    {"type": "string", "pattern": "^[!-~]{1,255}$"},
    OpenApiParameter.HEADER,
    required=False,
    description="Any unique string of up to 255 printable ASCII characters. A request "
    "retried with the same key within 24 hours gets back what the first one started (same "
    "id, `Idempotent-Replayed: true`), never a second run; the key reused for a different "
    "request is a 409 `idempotency_key_reused`.",
)


def idempotency(view, request, data) -> "services.Idempotency | None":
    """The request's `Idempotency-Key`, fingerprinted with the operation and what it asks
    for (`wait` left out: how long to wait for the answer is not part of the request)."""
    route = f"{type(view).__name__}.{view.action}:{sorted(view.kwargs.items())}"
    asked = {name: value for name, value in data.items() if name != "wait"}
    return services.Idempotency.of(
        request.headers.get(services.IDEMPOTENCY_KEY_HEADER), route, asked
    )


def replayed(response: Response, again: bool) -> Response:
    if again:
        response["Idempotent-Replayed"] = "true"
    return response


LAST_EVENT_ID = OpenApiParameter(
    "Last-Event-ID", OpenApiTypes.INT, OpenApiParameter.HEADER, description="Same as `after`."
)


@extend_schema_serializer(many=False)
class StreamFrameSerializer(serializers.Serializer):
    """One server-sent event (a frame of the stream)."""

    id = serializers.CharField(required=False)
    event = serializers.CharField(required=False)
    data = serializers.CharField()
    retry = serializers.IntegerField(required=False)


STREAM = OpenApiResponse(
    StreamFrameSerializer,
    description="Server-sent events: `id: <seq>`, `event: <type>`, `data: <JSON>`, "
    "ending after the run's terminal event.",
)
RUN_RESPONSES = {
    201: OpenApiResponse(ExecutionSerializer, description="The run ended within `wait`."),
    202: OpenApiResponse(ExecutionSerializer, description="The run is queued or running."),
}


@extend_schema_view(
    list=extend_schema(
        parameters=[ExecutionFilterSerializer],
        responses={200: ExecutionSerializer(many=True), **errors(400, 401)},
    ),
    retrieve=extend_schema(
        parameters=[EXECUTION_ID], responses={200: ExecutionSerializer, **errors(401, 404)}
    ),
)
class ExecutionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's executions (an admin sees everyone's), newest first."""

    serializer_class = ExecutionSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Execution.objects.none()
        executions = Execution.objects.for_user(self.request.user).select_related(
            "agent", "version"
        )
        if self.action in ("list", "active"):
            executions = ExecutionFilterSerializer.apply(executions, self.request.query_params)
        return executions.order_by("-created_at")

    def get_object(self):
        return services.access_execution(self.request.user, self.kwargs["pk"])

    def get_renderers(self):
        return _renderers(self, {"events"}) or super().get_renderers()

    # Whether a request that does not say how long to wait gets the run's outcome (its
    # clients expect it in the answer) or an answer at once.
    waits_until_end = False

    def _start(self, request, agent, data) -> Response:
        execution, again = services.start_once(
            request.user,
            idempotency(self, request, data),
            lambda: services.start_execution(
                request.user,
                agent,
                input=data.get("input"),
                timeout_seconds=data.get("timeout_seconds"),
                version=data.get("version"),
            ),
        )
        execution = services.wait_for(execution, data.get("wait"), until_end=self.waits_until_end)
        code = status.HTTP_201_CREATED if execution.is_terminal else status.HTTP_202_ACCEPTED
        return replayed(Response(self.get_serializer(execution).data, status=code), again)

    @extend_schema(
        operation_id="agents_execute",
        parameters=[AGENT_PK, IDEMPOTENCY_KEY],
        request={"application/json": RunRequestSerializer},
        responses={**RUN_RESPONSES, **errors(400, 401, 404, 409)},
    )
    def run_agent(self, request, agent_pk=None):
        """Run the agent (its current version unless `version` says otherwise)."""
        serializer = RunRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = agents.access_agent(request.user, agent_pk)
        return self._start(request, agent, serializer.validated_data)

    @extend_schema(
        parameters=[IDEMPOTENCY_KEY],
        request={"application/json": ExecutionCreateSerializer},
        responses={**RUN_RESPONSES, **errors(400, 401, 404, 409)},
    )
    def create(self, request):
        """Run the agent named by `agent_id` (its id or its name)."""
        serializer = ExecutionCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        agent = agents.find_agent(request.user, serializer.validated_data["agent_id"])
        return self._start(request, agent, serializer.validated_data)

    @extend_schema(
        parameters=[ExecutionFilterSerializer],
        responses={200: ExecutionSerializer(many=True), **errors(400, 401)},
    )
    @action(detail=False, methods=["get"])
    def active(self, request):
        """Executions still pending, running or paused."""
        page = self.paginate_queryset(self.get_queryset().active())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        parameters=[EXECUTION_ID],
        responses={200: LogEntrySerializer(many=True), **errors(401, 404)},
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        """The run's `log` events (stdout, stderr, the agent's and the platform's), oldest first."""
        execution = self.get_object()
        page = self.paginate_queryset(execution.events.filter(type="log").order_by("seq"))
        return self.get_paginated_response(LogEntrySerializer(page, many=True).data)

    @extend_schema(
        parameters=[EXECUTION_ID, EventQuerySerializer, LAST_EVENT_ID],
        responses={
            (200, "application/json"): EventSerializer(many=True),
            (200, SSE): STREAM,
            **errors(400, 401, 404),
        },
    )
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request, pk=None):
        """The run's events after `after`: a JSON array, or with `Accept: text/event-stream`
        a live stream that ends after the run's terminal event."""
        execution = self.get_object()
        params = dict(request.query_params.items())
        if request.headers.get("Last-Event-ID"):
            params["after"] = request.headers["Last-Event-ID"]
        query = EventQuerySerializer(data=params)
        query.is_valid(raise_exception=True)
        after = query.validated_data["after"]
        if wants_stream(request):
            return streams.sse_response(execution, after)
        stored = events.events_after(execution, after, query.validated_data["limit"])
        return Response(EventSerializer(stored, many=True).data)

    @extend_schema(
        parameters=[EXECUTION_ID],
        responses={200: CheckpointSerializer(many=True), **errors(401, 404)},
    )
    @action(detail=True, methods=["get"])
    def checkpoints(self, request, pk=None):
        """Checkpoints the run saved, in order."""
        execution = self.get_object()
        page = self.paginate_queryset(execution.checkpoints.order_by("seq"))
        return self.get_paginated_response(CheckpointSerializer(page, many=True).data)

    @extend_schema(
        parameters=[EXECUTION_ID],
        request=None,
        responses={200: ExecutionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel: a pending run never starts; a running or paused one is killed, and this
        answers once every process of it is gone (or after 30 s, still cancelling)."""
        execution = control.cancel_execution(self.get_object())
        return Response(self.get_serializer(execution).data)

    @extend_schema(
        parameters=[EXECUTION_ID],
        request=None,
        responses={200: ExecutionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        """Freeze a running run."""
        execution = control.pause_execution(self.get_object())
        return Response(self.get_serializer(execution).data)

    @extend_schema(
        parameters=[EXECUTION_ID],
        request=None,
        responses={200: ExecutionSerializer, **errors(401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Let a paused run go on."""
        execution = control.resume_execution(self.get_object())
        return Response(self.get_serializer(execution).data)


class CheckpointViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Checkpoints of the caller's runs: read one, or start a new run from it."""

    serializer_class = CheckpointDetailSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Checkpoint.objects.none()
        return Checkpoint.objects.for_user(self.request.user)

    def get_object(self):
        return services.access_checkpoint(self.request.user, self.kwargs["pk"])

    @extend_schema(
        parameters=[CHECKPOINT_ID],
        responses={200: CheckpointDetailSerializer, **errors(401, 404)},
    )
    def retrieve(self, request, pk=None):
        """The checkpoint with the state it saved."""
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        parameters=[CHECKPOINT_ID],
        request={"application/json": RestoreSerializer},
        responses={201: ExecutionSerializer, **errors(400, 401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def restore(self, request, pk=None):
        """A new run of the same version starting from the checkpoint's state."""
        checkpoint = self.get_object()
        serializer = RestoreSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not serializer.validated_data["create_new_run"]:
            raise ServiceError.invalid("create_new_run", REWIND_REFUSED, detail=REWIND_REFUSED)
        execution = services.restore_checkpoint(
            request.user, checkpoint, modifications=serializer.validated_data["modifications"]
        )
        return Response(ExecutionSerializer(execution).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[CHECKPOINT_ID],
        request={"application/json": ForkSerializer},
        responses={201: ExecutionSerializer, **errors(400, 401, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def fork(self, request, pk=None):
        """A new run from the checkpoint's state with changes (input, version, env, state)."""
        checkpoint = self.get_object()
        serializer = ForkSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        execution = services.fork_checkpoint(
            request.user, checkpoint, modifications=serializer.validated_data["modifications"]
        )
        return Response(ExecutionSerializer(execution).data, status=status.HTTP_201_CREATED)


class BatchViewSet(mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Several agents run with one request."""

    serializer_class = BatchSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Batch.objects.none()
        return Batch.objects.for_user(self.request.user)

    def get_object(self):
        batch = batches.access_batch(self.request.user, self.kwargs["pk"])
        batch.summary = batches.batch_summary(batch)
        return batch

    @extend_schema(parameters=[BATCH_ID], responses={200: BatchSerializer, **errors(401, 404)})
    def retrieve(self, request, pk=None):
        """The batch, its runs and how many of them completed."""
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        operation_id="execute_batch",
        parameters=[IDEMPOTENCY_KEY],
        request={"application/json": BatchRequestSerializer},
        responses={202: BatchStartedSerializer, **errors(400, 401, 404, 409)},
    )
    def start(self, request):
        """Run several agents (every ready one of yours unless `agent_ids` says which), at
        once or one after another. Follow it with `GET batches/{execution_id}`."""
        serializer = BatchRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        batch, again = services.start_once(
            request.user,
            idempotency(self, request, data),
            lambda: services.start_batch(request.user, **data),
        )
        response = Response(BatchStartedSerializer(batch).data, status=status.HTTP_202_ACCEPTED)
        return replayed(response, again)


class ChatViewSet(viewsets.GenericViewSet):
    """Agio's chat: one run whose input is the message."""

    serializer_class = ChatSerializer

    def get_renderers(self):
        return _renderers(self, {"chat"}) or super().get_renderers()

    @extend_schema(
        operation_id="chat",
        request={"application/json": ChatSerializer},
        responses={
            (200, "application/json"): OpenApiResponse(
                ChatResponseSerializer, description="The run ended."
            ),
            (202, "application/json"): OpenApiResponse(
                ChatResponseSerializer, description="The run did not end in time; poll it."
            ),
            (200, SSE): STREAM,
            **errors(400, 401, 404, 409),
        },
    )
    def chat(self, request):
        """Send a message to an agent: the run's events as they happen (`stream`), or its
        response once it has ended (waiting up to the run's timeout)."""
        serializer = ChatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        agent = agents.find_agent(request.user, data["agent_id"])
        execution = services.start_execution(request.user, agent, input=data["message"])
        stream = data.get("stream")
        if stream is None:
            stream = wants_stream(request)
        if stream:
            return streams.sse_response(execution, 0)
        execution = services.wait_for(execution, until_end=True)
        code = status.HTTP_200_OK if execution.is_terminal else status.HTTP_202_ACCEPTED
        return Response(ChatResponseSerializer(execution).data, status=code)
