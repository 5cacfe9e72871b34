"""Dashboard pages of sessions: the list with the form that starts one, one session's page
(its workspace's files, a shell, its processes and its tasks, all through the JSON API by
`static/js/session.js`), and the start, stop and delete buttons, which call the services the
API calls."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from agents.choices import AgentStatus
from agents.models import Agent
from core.errors import ServiceError
from core.pages import add_to_form, error_text, found, outcome
from workspaces import services
from workspaces.choices import SessionStatus
from workspaces.models import Session

PAGE_SIZE = 25
# The session page lists this many of the session's tasks (the API has them all).
RECENT_TASKS = 10


def runnable_agents(user):
    """The user's own agents a session can be made with: not archived, with a ready version."""
    return (
        Agent.objects.filter(owner=user, current_version__isnull=False)
        .exclude(status=AgentStatus.ARCHIVED)
        .select_related("current_version")
        .order_by("name")
    )


class SessionForm(forms.Form):
    """What a new session may ask for; every other limit comes from the agent or the server."""

    agent = forms.ChoiceField(
        required=False,
        help_text="Its current version's environment and limits; none: plain Python.",
    )
    workspace_mb = forms.IntegerField(
        required=False,
        min_value=services.MIN_WORKSPACE_MB,
        max_value=settings.AIMOS_SESSION_MAX_WORKSPACE_MB,
        label="Workspace (MB)",
        widget=forms.NumberInput(attrs={"placeholder": str(settings.AIMOS_SESSION_WORKSPACE_MB)}),
        help_text=f"Up to {settings.AIMOS_SESSION_MAX_WORKSPACE_MB} MB.",
    )
    idle_minutes = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=services.MAX_IDLE_TIMEOUT_SECONDS // 60,
        label="Idle stop (min)",
        widget=forms.NumberInput(
            attrs={"placeholder": str(max(1, settings.AIMOS_SESSION_IDLE_SECONDS // 60))}
        ),
        help_text="The workspace is kept.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.agents = {str(agent.pk): agent for agent in runnable_agents(user)}
        self.fields["agent"].choices = [("", "None (plain Python)")] + [
            (pk, f"{agent.name} ({agent.current_version.label})")
            for pk, agent in self.agents.items()
        ]

    def clean_agent(self) -> Agent | None:
        value = self.cleaned_data["agent"]
        return self.agents[value] if value else None


@never_cache
@login_required
def session_list(request):
    """The user's sessions, newest first, and the form that starts a new one."""
    initial = {}
    if request.GET.get("agent"):
        initial["agent"] = request.GET["agent"]
    data = request.POST if request.method == "POST" else None  # an empty form is a form too
    form = SessionForm(data, user=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        wanted = form.cleaned_data
        idle = wanted["idle_minutes"]
        try:
            session = services.create_session(
                request.user,
                agent=wanted["agent"],
                workspace_mb=wanted["workspace_mb"],
                idle_timeout_seconds=idle * 60 if idle else None,
            )
        except ServiceError as exc:
            add_to_form(form, exc)
        else:
            session = services.wait_until_started(session)
            _say_how_it_started(request, session, "Session started.")
            return redirect("session-detail", session_id=session.pk)
    sessions = (
        Session.objects.for_user(request.user)
        .visible()
        .select_related("agent", "version")
        .order_by("-created_at")
    )
    page = Paginator(sessions, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "workspaces/session_list.html",
        {
            "page": page,
            "form": form,
            "live_count": Session.objects.filter(owner=request.user).visible().live().count(),
            "max_live": settings.AIMOS_SESSION_MAX_ACTIVE_PER_USER,
        },
        status=400 if form.errors else 200,
    )


def _say_how_it_started(request, session: Session, ok: str) -> None:
    if session.status == SessionStatus.ACTIVE:
        messages.success(request, ok)
    elif session.status == SessionStatus.FAILED:
        messages.error(request, f"The session failed to start: {session.error or 'no reason'}")
    else:
        messages.info(request, f"The session is {session.status}; this page follows it.")


@never_cache
@login_required
def session_detail(request, session_id):
    session = found(services.access_session, request.user, session_id)
    tasks = _tasks_of(session)
    return render(
        request,
        "workspaces/session_detail.html",
        {
            "session": session,
            "active": session.status == SessionStatus.ACTIVE,
            "live": session.is_live,
            "ended": session.status in SessionStatus.ended(),
            # A session without an agent runs tasks of an agent named with each one.
            "task_agents": [] if session.agent_id else list(runnable_agents(session.owner)),
            "tasks": tasks,
            "api": f"/api/v1/sessions/{session.pk}",
            "ws": f"/ws/sessions/{session.pk}/",
        },
    )


def _tasks_of(session: Session) -> list:
    """The session's newest tasks (runs of an agent in its workspace)."""
    return list(
        session.tasks.select_related("agent", "version").order_by("-created_at")[:RECENT_TASKS]
    )


def _back(request, session: Session) -> str:
    """Where a button sends the user back to: the session's page or the list it was on."""
    if request.POST.get("from") == "detail":
        return reverse("session-detail", args=[session.pk])
    return reverse("session-list")


@require_POST
@login_required
def session_start(request, session_id):
    """Start a stopped or failed session again (its workspace as it was)."""
    session = found(services.access_session, request.user, session_id)
    to = _back(request, session)
    try:
        session = services.start_session(session)
    except ServiceError as exc:
        return outcome(request, to, error=exc, data={"status": session.status})
    session = services.wait_until_started(session)
    if session.status == SessionStatus.FAILED:
        exc = ServiceError(f"The session failed to start: {session.error or 'no reason'}")
        return outcome(request, to, error=exc, data={"status": session.status})
    ok = "Session started." if session.status == SessionStatus.ACTIVE else "Session starting."
    return outcome(request, to, ok=ok, data={"status": session.status})


@require_POST
@login_required
def session_stop(request, session_id):
    """Stop the session's sandbox (every process in it ends); the workspace is kept."""
    session = found(services.access_session, request.user, session_id)
    to = _back(request, session)
    try:
        session = services.stop_session(session)
    except ServiceError as exc:
        return outcome(request, to, error=exc, data={"status": session.status})
    ok = "Session stopped; its workspace is kept." if not session.is_live else "Stopping…"
    return outcome(request, to, ok=ok, data={"status": session.status})


@require_POST
@login_required
def session_pause(request, session_id):
    """Freeze the session's sandbox (its running tasks paused first)."""
    return _change(request, session_id, services.pause_session, "Session paused.")


@require_POST
@login_required
def session_resume(request, session_id):
    """Thaw a paused session (its paused tasks resumed)."""
    return _change(request, session_id, services.resume_session, "Session resumed.")


def _change(request, session_id, change, ok: str):
    session = found(services.access_session, request.user, session_id)
    to = _back(request, session)
    try:
        session = change(session)
    except ServiceError as exc:
        return outcome(request, to, error=exc, data={"status": session.status})
    return outcome(request, to, ok=ok, data={"status": session.status})


@require_POST
@login_required
def session_delete(request, session_id):
    """Delete the session: its processes are killed and its workspace removed."""
    session = found(services.access_session, request.user, session_id)
    to = reverse("session-list")
    try:
        done = services.delete_session(session)
    except ServiceError as exc:
        messages.error(request, f"Not deleted: {error_text(exc)}")
        return redirect(to)
    short = str(session.pk)[:8]
    ok = f"Session {short} deleted." if done else f"Session {short} is being deleted."
    return outcome(request, to, ok=ok)
