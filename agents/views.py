"""Dashboard pages of agents: the list, a new agent, an agent with its versions, uploads,
builds followed live, and the form that runs it."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from agents import services
from agents.choices import AgentStatus, VersionStatus
from agents.manifest import NAME_RE
from agents.models import Agent, clean_tags, validate_name
from agents.runs import runs
from core.errors import ServiceError
from core.pages import add_to_form, error_text, found, outcome, parse_json

RECENT_RUNS = 10


class AgentForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        validators=[validate_name],
        widget=forms.TextInput(
            attrs={"placeholder": "my-agent", "pattern": NAME_RE.pattern, "autocomplete": "off"}
        ),
        help_text="Lowercase letters, digits, - and _; unique among your agents.",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    role = forms.CharField(required=False, max_length=200)
    tags = forms.CharField(
        required=False,
        help_text="Comma-separated, e.g. demo, nlp",
        widget=forms.TextInput(attrs={"placeholder": "demo, nlp"}),
    )

    def clean_tags(self) -> list[str]:
        return clean_tags(tag for tag in self.cleaned_data["tags"].split(",") if tag.strip())


class RunForm(forms.Form):
    """What starts a run: a JSON input (checked here, and in the browser before sending)."""

    input = forms.CharField(
        required=False,
        label="Input (JSON)",
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "data-json": "any"}),
    )
    version = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    timeout_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        label="Timeout (s)",
        widget=forms.NumberInput(attrs={"placeholder": "manifest"}),
    )

    def __init__(self, *args, agent: Agent, **kwargs):
        super().__init__(*args, **kwargs)
        ready = agent.versions.filter(status=VersionStatus.READY).order_by("-number")
        self.fields["version"].choices = [("", "current")] + [
            (version.number, version.label) for version in ready
        ]

    def clean_input(self):
        try:
            return parse_json(self.cleaned_data["input"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class UploadForm(forms.Form):
    file = forms.FileField(
        label="Package (.tar.gz)",
        widget=forms.ClearableFileInput(attrs={"accept": ".tar.gz,.tgz,application/gzip"}),
    )


@login_required
def agent_list(request):
    """The user's agents with their run numbers; filter by status and a search term."""
    agents = (
        Agent.objects.for_user(request.user)
        .select_related("current_version")
        .with_execution_stats()
        .order_by("-created_at")
    )
    status = request.GET.get("status", "")
    search = request.GET.get("search", "").strip()
    if status in AgentStatus.values:
        agents = agents.filter(status=status)
    if search:
        agents = agents.search(search)
    return render(
        request,
        "agents/agent_list.html",
        {
            "agents": agents,
            "statuses": AgentStatus.values,
            "status": status,
            "search": search,
            "filtered": bool(status or search),
        },
    )


@login_required
def agent_create(request):
    form = AgentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            agent = services.create_agent(request.user, **form.cleaned_data)
        except ServiceError as exc:
            add_to_form(form, exc)
        else:
            messages.success(request, f"Agent {agent.name} created. Upload its first version.")
            return redirect("agent-detail", agent_id=agent.pk)
    return render(
        request, "agents/agent_new.html", {"form": form}, status=400 if form.errors else 200
    )


def _detail(request, agent: Agent, *, run_form=None, upload_form=None, status=200):
    versions = agent.versions.order_by("-number")
    recent = runs().recent(agent, RECENT_RUNS)
    if run_form is None:
        # "Run again" from an execution's page brings that run's input along.
        run_form = RunForm(agent=agent, initial={"input": request.GET.get("input") or "{}"})
    return render(
        request,
        "agents/agent_detail.html",
        {
            "agent": agent,
            "versions": versions,
            "executions": recent,
            "activity": agent.logs.order_by("-timestamp", "-id")[:8],
            "run_form": run_form,
            "upload_form": upload_form or UploadForm(),
            "upload_limit": settings.AIMOS_UPLOAD_MAX_BYTES,
        },
        status=status,
    )


@login_required
def agent_detail(request, agent_id):
    agent = found(services.access_agent, request.user, agent_id, with_stats=True)
    return _detail(request, agent)


@require_POST
@login_required
def agent_archive(request, agent_id):
    """Archive the agent (it can no longer run), or restore it from the archive."""
    agent = found(services.access_agent, request.user, agent_id)
    restore = agent.status == AgentStatus.ARCHIVED
    try:
        services.update_agent(agent, status=AgentStatus.DRAFT if restore else AgentStatus.ARCHIVED)
    except ServiceError as exc:
        return outcome(request, reverse("agent-detail", args=[agent.pk]), error=exc)
    done = "restored from the archive" if restore else "archived"
    return outcome(request, reverse("agent-detail", args=[agent.pk]), ok=f"{agent.name} {done}.")


@require_POST
@login_required
def version_upload(request, agent_id):
    """Upload without JavaScript (the page's script sends the file to the API instead, to show
    the progress); the same service either way."""
    agent = found(services.access_agent, request.user, agent_id, with_stats=True)
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _detail(request, agent, upload_form=form, status=400)
    try:
        version = services.create_version(agent, form.cleaned_data["file"])
    except ServiceError as exc:
        form.add_error("file", error_text(exc))
        return _detail(request, agent, upload_form=form, status=exc.status_code)
    messages.success(request, f"Version {version.label} uploaded; it is queued to build.")
    return redirect("agent-detail", agent_id=agent.pk)


@require_POST
@login_required
def version_rebuild(request, agent_id, number):
    agent = found(services.access_agent, request.user, agent_id)
    version = found(services.access_version, agent, number)
    to = reverse("agent-detail", args=[agent.pk])
    try:
        services.rebuild_version(version)
    except ServiceError as exc:
        return outcome(request, to, error=exc)
    return outcome(request, to, ok=f"Rebuilding {version.label}.")


@never_cache
@login_required
def version_build(request, agent_id, number):
    """The build of one version as JSON, polled by the agent page while it builds."""
    agent = found(services.access_agent, request.user, agent_id)
    version = found(services.access_version, agent, number)
    agent.refresh_from_db(fields=["status"])
    return JsonResponse(
        {
            "number": version.number,
            "version": version.label,
            "status": version.status,
            "build_log": version.build_log,
            "agent_status": agent.status,
            "done": version.status not in VersionStatus.active(),
        }
    )


@require_POST
@login_required
def agent_run(request, agent_id):
    """Start a run from the form; its page follows it live."""
    agent = found(services.access_agent, request.user, agent_id, with_stats=True)
    form = RunForm(request.POST, agent=agent)
    if not form.is_valid():
        messages.error(request, "The run was not started: check the form.")
        return _detail(request, agent, run_form=form, status=400)
    try:
        execution = runs().start(
            request.user,
            agent,
            input=form.cleaned_data["input"],
            timeout_seconds=form.cleaned_data["timeout_seconds"],
            version=form.cleaned_data["version"],
        )
    except ServiceError as exc:
        # A message, not a form error: the form is not shown when the agent cannot run.
        messages.error(request, f"The run was not started: {error_text(exc)}")
        return _detail(request, agent, run_form=form, status=exc.status_code)
    return redirect("execution-detail", execution_id=execution.pk)
