"""The API of tasks: runs of an agent inside a session's workspace (DESIGN §9). Their use
cases (ask, pause, resume, cancel) are in `workspaces.services`.

A task is an ordinary `Execution` with `session` set, started by the same service as every run
(`executions.services.start_execution`: the same checks, idempotency, queue, events, streams,
control and checkpoints). Its worker starts it cold in a sandbox of its own whose /workspace
is the session's workspace and which reaches the session's daemon
(`workspaces.services.task_mount`); the agent sees it as `ctx.workspace`
(`sandbox/runner.py`). Its events also reach the session's sockets as the reference's task
events (`workspaces.live`).

`POST sessions/{id}/tasks` `{input, agent?, version?, timeout_seconds?, wait?}` runs the
session's agent, or the one named (an agent of the session's owner, by id or name); the
session must be active (409 `session_not_active`). `GET sessions/{id}/tasks`: the session's
tasks, newest first, filtered and paged as the executions list is.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from core.errors import error_responses as errors
from executions import services as runs
from executions.api import (
    IDEMPOTENCY_KEY,
    ExecutionFilterSerializer,
    ExecutionSerializer,
    RunRequestSerializer,
    idempotency,
    replayed,
)
from executions.models import Execution
from workspaces import services
from workspaces.api import SESSION_ID
from workspaces.models import Session


class TaskRequestSerializer(RunRequestSerializer):
    agent = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=200,
        help_text="The agent to run (its id, or the name of one of the session owner's agents); "
        "the session's agent when omitted.",
    )


class TaskSerializer(ExecutionSerializer):
    session_id = serializers.UUIDField(read_only=True, allow_null=True)

    class Meta(ExecutionSerializer.Meta):
        fields = [*ExecutionSerializer.Meta.fields, "session_id"]
        read_only_fields = fields


TASK_RESPONSES = {
    201: TaskSerializer,
    202: TaskSerializer,
}


@extend_schema_view(
    list=extend_schema(
        operation_id="sessions_tasks_list",
        parameters=[SESSION_ID, ExecutionFilterSerializer],
        responses={200: TaskSerializer(many=True), **errors(400, 401, 404)},
    ),
    create=extend_schema(
        operation_id="sessions_tasks_create",
        parameters=[SESSION_ID, IDEMPOTENCY_KEY],
        request={"application/json": TaskRequestSerializer},
        responses={**TASK_RESPONSES, **errors(400, 401, 404, 409)},
    ),
)
class SessionTaskViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The tasks of a session: runs of an agent in its workspace."""

    serializer_class = TaskSerializer

    def session(self) -> Session:
        return services.access_session(self.request.user, self.kwargs["pk"])

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Execution.objects.none()
        tasks = self.session().tasks.select_related("agent", "version")
        return ExecutionFilterSerializer.apply(tasks, self.request.query_params).order_by(
            "-created_at"
        )

    def list(self, request, *args, **kwargs):
        """The session's tasks, newest first (filters and paging of the executions list)."""
        return super().list(request, *args, **kwargs)

    def create(self, request, pk=None):
        """Run an agent in the session's workspace (the session's agent unless `agent` names
        another): 202 with the task queued or running, or 201 with it ended within `wait`. The
        session must be active (409 `session_not_active`)."""
        session = self.session()
        body = TaskRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        agent = services.task_agent(session, data.get("agent"))
        execution, again = runs.start_once(
            request.user,
            idempotency(self, request, data),
            lambda: services.start_task(
                session,
                agent=agent,
                input=data.get("input"),
                timeout_seconds=data.get("timeout_seconds"),
                version=data.get("version"),
            ),
        )
        execution = runs.wait_for(execution, data.get("wait"))
        code = status.HTTP_201_CREATED if execution.is_terminal else status.HTTP_202_ACCEPTED
        return replayed(Response(TaskSerializer(execution).data, status=code), again)
