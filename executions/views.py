"""Dashboard pages of executions: the list, one run followed live, its controls (pause,
resume, cancel), new runs from its checkpoints (restore, fork)."""

from __future__ import annotations

import uuid

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from agents.choices import VersionStatus
from agents.models import Agent
from core.errors import ServiceError
from core.pages import error_text, found, outcome, parse_json
from executions import control, services
from executions.choices import TERMINAL_EVENTS, ExecutionStatus
from executions.models import Execution

PAGE_SIZE = 25
# The page renders this many events; a longer log is followed from its end (the API has all).
TRANSCRIPT_LIMIT = 5000

FINISHED = {
    TERMINAL_EVENTS[ExecutionStatus.COMPLETED]: "Completed",
    TERMINAL_EVENTS[ExecutionStatus.FAILED]: "Failed",
    TERMINAL_EVENTS[ExecutionStatus.CANCELLED]: "Cancelled",
    TERMINAL_EVENTS[ExecutionStatus.TIMED_OUT]: "Timed out",
}


def transcript(events) -> list[dict]:
    """The run's events as the page shows them: consecutive text deltas joined into one block,
    every other event an item of its own. `static/js/execution.js` builds the same items from
    the live events."""
    items: list[dict] = []
    for event in events:
        data = event.data if isinstance(event.data, dict) else {"value": event.data}
        kind = event.type
        if kind == "content_delta":
            if items and items[-1]["kind"] == "text":
                items[-1]["text"] += str(data.get("content", ""))
                continue
            items.append({"kind": "text", "seq": event.seq, "text": str(data.get("content", ""))})
            continue
        item = {"kind": kind, "seq": event.seq, "data": data, "timestamp": event.timestamp}
        if kind == "run_started":
            item["kind"], item["text"] = "status", f"Run started ({data.get('version', '')})"
        elif kind in ("run_paused", "run_resumed"):
            item["kind"], item["text"] = "status", "Paused" if kind == "run_paused" else "Resumed"
        elif kind in FINISHED:
            detail = data.get("error") or data.get("reason") or ""
            item["kind"], item["text"] = (
                "status",
                FINISHED[kind] + (f": {detail}" if detail else ""),
            )
            item["final"] = kind
        elif kind not in ("tool_call", "tool_result", "log", "checkpoint", "error"):
            item["kind"], item["type"] = "event", kind
        items.append(item)
    return items


@login_required
def execution_list(request):
    """The user's runs, newest first, filtered by status and agent, a page at a time."""
    executions = (
        Execution.objects.for_user(request.user)
        .select_related("agent", "version")
        .order_by("-created_at")
    )
    status = request.GET.get("status", "")
    agent_id = request.GET.get("agent", "")
    if not _is_uuid(agent_id):  # another user's agent: the scoped list just has none of its runs
        agent_id = ""
    executions = executions.matching(
        status=status if status in ExecutionStatus.values else None, agent_id=agent_id
    )
    agents = Agent.objects.for_user(request.user).order_by("name").only("id", "name")
    page = Paginator(executions, PAGE_SIZE).get_page(request.GET.get("page"))
    query = "&".join(
        f"{name}={value}" for name, value in (("status", status), ("agent", agent_id)) if value
    )
    return render(
        request,
        "executions/execution_list.html",
        {
            "page": page,
            "statuses": ExecutionStatus.values,
            "status": status,
            "agents": agents,
            "agent_id": agent_id,
            "query": query,
            "filtered": bool(status or agent_id),
        },
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class RestoreForm(forms.Form):
    input = forms.CharField(
        required=False,
        label="New input (JSON)",
        help_text="Empty: the same input as this run.",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "data-json": "any"}),
    )

    def clean_input(self):
        try:
            return parse_json(self.cleaned_data["input"], blank=...)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def modifications(self) -> dict:
        value = self.cleaned_data["input"]
        return {} if value is ... else {"input": value}


class ForkForm(RestoreForm):
    version = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)

    def __init__(self, *args, agent: Agent, **kwargs):
        super().__init__(*args, **kwargs)
        ready = agent.versions.filter(status=VersionStatus.READY).order_by("-number")
        self.fields["version"].choices = [("", "same version")] + [
            (version.number, version.label) for version in ready
        ]

    def modifications(self) -> dict:
        changes = super().modifications()
        if self.cleaned_data.get("version"):
            changes["version"] = self.cleaned_data["version"]
        return changes


@login_required
def execution_detail(request, execution_id):
    execution = found(services.access_execution, request.user, execution_id)
    events = list(execution.events.order_by("-seq")[:TRANSCRIPT_LIMIT])[::-1]
    checkpoints = list(execution.checkpoints.order_by("seq"))
    # The status is read after the events: a run that moved on meanwhile (its start and its
    # `run_started` commit together) shows at least the state its shown events imply.
    execution.refresh_from_db()
    return render(
        request,
        "executions/execution_detail.html",
        {
            "execution": execution,
            "items": transcript(events),
            "last_seq": events[-1].seq if events else 0,
            "truncated": bool(events) and events[0].seq > 1,
            "checkpoints": checkpoints,
            "children": execution.children.select_related("agent").order_by("-created_at")[:20],
            "restore_form": RestoreForm(),
            "fork_form": ForkForm(agent=execution.agent),
            "active": execution.status in ExecutionStatus.active(),
        },
    )


def _control(request, execution_id, action, done: str):
    execution = found(services.access_execution, request.user, execution_id)
    to = reverse("execution-detail", args=[execution.pk])
    try:
        execution = action(execution)
    except ServiceError as exc:
        return outcome(request, to, error=exc, data={"status": execution.status})
    if execution.status == done:
        ok = f"Execution {done.replace('_', ' ')}."
    else:
        ok = f"Asked the worker; the execution is {execution.status} for now."
    return outcome(request, to, ok=ok, data={"status": execution.status})


@require_POST
@login_required
def execution_pause(request, execution_id):
    return _control(request, execution_id, control.pause_execution, ExecutionStatus.PAUSED)


@require_POST
@login_required
def execution_resume(request, execution_id):
    return _control(request, execution_id, control.resume_execution, ExecutionStatus.RUNNING)


@require_POST
@login_required
def execution_cancel(request, execution_id):
    return _control(request, execution_id, control.cancel_execution, ExecutionStatus.CANCELLED)


def _from_checkpoint(request, checkpoint_id, *, fork: bool):
    checkpoint = found(services.access_checkpoint, request.user, checkpoint_id)
    source = checkpoint.execution
    form = ForkForm(request.POST, agent=source.agent) if fork else RestoreForm(request.POST)
    back = reverse("execution-detail", args=[source.pk])
    if not form.is_valid():
        problems = " ".join(message for errors in form.errors.values() for message in errors)
        messages.error(request, f"No new run: {problems}")
        return redirect(back)
    start = services.fork_checkpoint if fork else services.restore_checkpoint
    try:
        execution = start(request.user, checkpoint, modifications=form.modifications())
    except ServiceError as exc:
        messages.error(request, f"No new run: {error_text(exc)}")
        return redirect(back)
    verb = "Forked" if fork else "Restored"
    messages.success(request, f"{verb} from checkpoint “{checkpoint}” of {str(source.pk)[:8]}.")
    return redirect("execution-detail", execution_id=execution.pk)


@require_POST
@login_required
def checkpoint_restore(request, checkpoint_id):
    return _from_checkpoint(request, checkpoint_id, fork=False)


@require_POST
@login_required
def checkpoint_fork(request, checkpoint_id):
    return _from_checkpoint(request, checkpoint_id, fork=True)
