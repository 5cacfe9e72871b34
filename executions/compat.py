"""Run endpoints of the reference platforms (Oasis workflows, Anymind runtime), in their
shapes, on the same services as the canonical API. Routed by `aimos.compat`, not in the
OpenAPI schema."""

from django.db.models import Prefetch
from rest_framework import serializers, viewsets
from rest_framework.response import Response

from agents import services as agents
from executions import control, services
from executions.api import ExecutionSerializer, ExecutionViewSet, idempotency, replayed
from executions.choices import ExecutionStatus
from executions.models import Execution, ExecutionEvent

# --- Oasis: workflows ----------------------------------------------------------------------------

WORKFLOW_MESSAGES = {
    ExecutionStatus.PENDING: "Workflow is queued for execution",
    ExecutionStatus.RUNNING: "Workflow is currently executing",
    ExecutionStatus.PAUSED: "Workflow is paused",
    ExecutionStatus.COMPLETED: "Workflow executed successfully",
    ExecutionStatus.FAILED: "Workflow failed",
    ExecutionStatus.CANCELLED: "Workflow was cancelled by user",
    ExecutionStatus.TIMED_OUT: "Workflow timed out",
}


def workflow_message(execution: Execution) -> str:
    message = WORKFLOW_MESSAGES[execution.status]
    if execution.status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
        # The last line of a traceback says what went wrong.
        lines = (execution.error_message or "").strip().splitlines()
        if lines:
            message = f"{message}: {lines[-1]}"
    return message


class WorkflowRequestSerializer(serializers.Serializer):
    query = serializers.JSONField(help_text="What to do; the agent's input is {query, model}.")
    model = serializers.CharField(required=False, allow_blank=True, allow_null=True)
    agent_id = serializers.CharField(
        required=False, help_text="Your most recently created ready agent when omitted."
    )


class WorkflowStartedSerializer(serializers.Serializer):
    workflow_id = serializers.UUIDField(source="id")
    status = serializers.CharField()
    message = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_message(self, execution) -> str:
        return "Workflow execution started successfully"


class WorkflowSerializer(serializers.Serializer):
    workflow_id = serializers.UUIDField(source="id")
    status = serializers.CharField()
    message = serializers.SerializerMethodField()
    started_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(source="finished_at")
    duration = serializers.SerializerMethodField()
    logs = serializers.SerializerMethodField()

    def get_message(self, execution) -> str:
        return workflow_message(execution)

    def get_duration(self, execution) -> float | None:
        """Seconds, as Oasis reports them."""
        if execution.duration_ms is not None:
            return round(execution.duration_ms / 1000, 3)
        if execution.started_at and execution.finished_at:
            return round((execution.finished_at - execution.started_at).total_seconds(), 3)
        return None

    def get_logs(self, execution) -> str:
        events = getattr(execution, "log_events", None)
        if events is None:
            events = execution.events.filter(type="log").order_by("seq")
        return "\n".join(str(event.data.get("message", "")) for event in events)


def _log_events():
    return Prefetch(
        "events",
        queryset=ExecutionEvent.objects.filter(type="log").order_by("seq"),
        to_attr="log_events",
    )


class WorkflowViewSet(viewsets.GenericViewSet):
    """Oasis: `workflow/execute`, `workflow/{id}/status`, `DELETE workflow/{id}`,
    `workflow/active`."""

    serializer_class = WorkflowSerializer

    def get_object(self) -> Execution:
        return services.access_execution(self.request.user, self.kwargs["pk"])

    def execute(self, request):
        serializer = WorkflowRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data.get("agent_id"):
            agent = agents.find_agent(request.user, data["agent_id"])
        else:
            agent = agents.latest_ready_agent(request.user)
        execution, again = services.start_once(
            request.user,
            idempotency(self, request, data),
            lambda: services.start_execution(
                request.user, agent, input={"query": data["query"], "model": data.get("model")}
            ),
        )
        return replayed(Response(WorkflowStartedSerializer(execution).data), again)

    def workflow_status(self, request, pk=None):
        return Response(self.get_serializer(self.get_object()).data)

    def cancel(self, request, pk=None):
        execution = control.cancel_execution(self.get_object())
        return Response(self.get_serializer(execution).data)

    def active(self, request):
        executions = (
            Execution.objects.for_user(request.user)
            .active()
            .prefetch_related(_log_events())
            .order_by("-created_at")
        )
        page = self.paginate_queryset(executions)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


# --- Anymind: runtime ----------------------------------------------------------------------------


class RuntimeExecutionSerializer(ExecutionSerializer):
    """An execution as Anymind shows it: also `input_data`, `output_data`, `updated_at`."""

    input_data = serializers.JSONField(source="input", read_only=True)
    output_data = serializers.JSONField(source="output", read_only=True)
    updated_at = serializers.SerializerMethodField()

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "input_data", "output_data", "updated_at"]
        read_only_fields = fields

    def get_updated_at(self, execution):
        changed = (
            execution.finished_at
            or execution.paused_at
            or execution.started_at
            or execution.created_at
        )
        return serializers.DateTimeField().to_representation(changed)


class RuntimeExecutionViewSet(ExecutionViewSet):
    """Anymind: `runtime/{agent_id}/execute` answers once the run has ended, and the
    `runtime/executions` paths, with Anymind's execution shape."""

    serializer_class = RuntimeExecutionSerializer
    waits_until_end = True
