"""Tasks: runs of an agent inside a session's workspace (DESIGN §9).

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

import time
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from agents import services as agents
from agents.models import Agent
from core.errors import Conflict, ServiceError
from core.errors import error_responses as errors
from executions import control
from executions import services as runs
from executions.api import (
    IDEMPOTENCY_KEY,
    ExecutionFilterSerializer,
    ExecutionSerializer,
    RunRequestSerializer,
    idempotency,
    replayed,
)
from executions.choices import ExecutionStatus
from executions.models import Execution
from workspaces import services
from workspaces.api import SESSION_ID
from workspaces.models import Session
from workspaces.operations import use

# --- Use cases ---------------------------------------------------------------------------------


def task_agent(session: Session, ref: str | None) -> Agent:
    """The agent a task runs: `ref` (an id, or the name of one of the session owner's agents),
    else the session's own. A 400 when neither names one."""
    if ref:
        # The session owner's agents only: a task runs in their workspace.
        return agents.find_agent(session.owner, ref)
    if session.agent is None:
        raise ServiceError.invalid(
            "agent", "The session has no agent of its own: name the agent to run."
        )
    return session.agent


def start_task(
    session: Session,
    *,
    agent: Agent,
    input: Any = None,
    timeout_seconds: int | None = None,
    version: int | str | None = None,
) -> Execution:
    """A pending task of the session (its owner's run of `agent`), queued as any run.
    Conflict when the session is not active, or the agent has no ready version."""
    use(session)
    return runs.start_execution(
        session.owner,
        agent,
        input=input,
        timeout_seconds=timeout_seconds,
        version=version,
        session_id=session.pk,
    )


def cancel_tasks(session_id) -> int:
    """Cancel every task of the session still pending, running or paused (for a session that
    stops or is deleted: its tasks lose their workspace). Returns at once; a running task ends
    when its worker has killed it. How many were asked to end."""
    asked = 0
    for execution in Execution.objects.filter(session_id=session_id).active():
        try:
            control.cancel_execution(execution, wait=0)
            asked += 1
        except Conflict:  # it ended meanwhile
            pass
    return asked


def pause_tasks(session_id, *, wait: float) -> None:
    """Pause every running task of the session (for a session being paused); returns once
    they are paused, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    running = Execution.objects.filter(session_id=session_id, status=ExecutionStatus.RUNNING)
    for execution in running:
        try:
            control.pause_execution(execution, wait=max(0.0, deadline - time.monotonic()))
        except Conflict:  # it ended meanwhile
            pass


def resume_tasks(session_id) -> None:
    """Resume every paused task of the session (for a session resumed). Returns at once."""
    paused = Execution.objects.filter(session_id=session_id, status=ExecutionStatus.PAUSED)
    for execution in paused:
        try:
            control.resume_execution(execution, wait=0)
        except Conflict:  # it ended meanwhile
            pass


# --- API ---------------------------------------------------------------------------------------


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
        agent = task_agent(session, data.get("agent"))
        execution, again = runs.start_once(
            request.user,
            idempotency(self, request, data),
            lambda: start_task(
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
