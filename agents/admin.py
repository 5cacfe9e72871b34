from django import forms
from django.contrib import admin, messages

from agents import services
from agents.choices import AgentStatus
from agents.models import Agent, AgentLog, AgentVersion, clean_tags, validate_name
from core.errors import ServiceError


class VersionInline(admin.TabularInline):
    model = AgentVersion
    fields = ["number", "status", "entrypoint", "artifact_size", "created_at", "build_finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["-number"]

    def has_add_permission(self, request, obj=None):
        return False


class AgentForm(forms.ModelForm):
    """The same name and tag rules as the API and the pages."""

    name = forms.CharField(max_length=64, validators=[validate_name])

    class Meta:
        model = Agent
        fields = "__all__"

    def clean_tags(self) -> list[str]:
        tags = self.cleaned_data["tags"]
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise forms.ValidationError("A list of tags.")
        return clean_tags(tags)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentForm
    list_display = ["name", "owner", "status", "current_version", "created_at", "updated_at"]
    list_filter = ["status", "owner"]
    search_fields = ["name", "description", "role", "owner__username", "owner__email"]
    date_hierarchy = "created_at"
    readonly_fields = ["id", "status", "current_version", "created_at", "updated_at"]
    fields = ["id", "owner", "name", "description", "role", "tags", "status", "current_version"]
    list_select_related = ["owner", "current_version"]
    inlines = [VersionInline]
    actions = ["archive_agents"]

    @admin.action(description="Archive the selected agents")
    def archive_agents(self, request, queryset):
        for agent in queryset:
            services.update_agent(agent, status=AgentStatus.ARCHIVED)
        self.message_user(request, f"Archived {queryset.count()} agent(s).", messages.SUCCESS)


class VersionUploadForm(forms.ModelForm):
    """Adding a version in the admin is uploading its archive, through the same service as
    the API: the archive is checked and the version queued to build."""

    file = forms.FileField(help_text="The agent package: a .tar.gz with aimos.yaml.")

    class Meta:
        model = AgentVersion
        fields = ["agent"]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.created = services.create_version(cleaned["agent"], cleaned["file"])
        except ServiceError as exc:
            raise forms.ValidationError(exc.detail) from None
        return cleaned

    def save(self, commit=True):
        return self.created

    def save_m2m(self):
        pass


@admin.register(AgentVersion)
class AgentVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "status",
        "entrypoint",
        "artifact_size",
        "created_at",
        "build_finished_at",
    ]
    list_filter = ["status", "sandbox_backend"]
    search_fields = ["agent__name", "entrypoint", "artifact_sha256"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    actions = ["rebuild_versions"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = VersionUploadForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["agent", "file"]
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [field.name for field in AgentVersion._meta.fields]

    def save_model(self, request, obj, form, change):
        pass  # created by VersionUploadForm through the service

    @admin.action(description="Rebuild the selected versions")
    def rebuild_versions(self, request, queryset):
        for version in queryset.select_related("agent"):
            try:
                services.rebuild_version(version)
            except ServiceError as exc:
                self.message_user(request, f"{version}: {exc.detail}", messages.WARNING)
            else:
                self.message_user(request, f"{version}: rebuild queued.", messages.SUCCESS)


@admin.register(AgentLog)
class AgentLogAdmin(admin.ModelAdmin):
    list_display = ["timestamp", "agent", "level", "source", "message"]
    list_filter = ["level", "source"]
    search_fields = ["agent__name", "message"]
    date_hierarchy = "timestamp"
    list_select_related = ["agent"]

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in AgentLog._meta.fields]

    def has_add_permission(self, request):
        return False
