from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm, UserCreationForm
from django.utils import timezone

from accounts import services
from accounts.choices import ApiKeyStatus
from accounts.models import ApiKey, User, username_refusal


def _clean_username(form):
    username = form.cleaned_data.get("username")
    if username and (why := username_refusal(username)):
        # An unchanged legacy name may stay; a new or renamed one follows the rule.
        if form.instance.pk is None or username != form.initial.get("username"):
            raise forms.ValidationError(why, code="username_looks_like_email")
    return username


class AdminUserCreationForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email", "full_name")

    def clean_username(self):
        super().clean_username()
        return _clean_username(self)


class AdminUserChangeForm(UserChangeForm):
    class Meta(UserChangeForm.Meta):
        model = User
        fields = "__all__"

    def clean_username(self):
        return _clean_username(self)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("name", "key_prefix", "created_at", "expires_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = AdminUserChangeForm
    add_form = AdminUserCreationForm
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("full_name", "email")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "email", "full_name", "password1", "password2"),
            },
        ),
    )
    list_display = (
        "username",
        "email",
        "full_name",
        "is_staff",
        "is_active",
        "date_joined",
        "last_login",
    )
    list_filter = ("is_staff", "is_superuser", "is_active", "groups", "date_joined")
    search_fields = ("username", "email", "full_name")
    ordering = ("username",)
    readonly_fields = ("last_login", "date_joined")

    def get_inlines(self, request, obj):
        return [ApiKeyInline] if obj else []


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return ApiKeyStatus.choices

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == ApiKeyStatus.ACTIVE:
            return queryset.usable()
        if self.value() == ApiKeyStatus.EXPIRED:
            return queryset.not_revoked().filter(expires_at__lte=now)
        if self.value() == ApiKeyStatus.REVOKED:
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created by their owners (the plaintext is shown to them once); here an
    operator finds, renames and revokes them. The hash is never displayed."""

    list_display = (
        "name",
        "user",
        "key_prefix",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (ApiKeyStatusFilter, "created_at", "expires_at")
    search_fields = ("name", "key_prefix", "user__username", "user__email")
    list_select_related = ("user",)
    fields = (
        "name",
        "user",
        "key_prefix",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = (
        "user",
        "key_prefix",
        "status",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ["revoke_keys"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    @admin.display(description="status")
    def status(self, obj: ApiKey) -> str:
        return obj.status

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = sum(services.revoke_api_key(key) for key in queryset.not_revoked())
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
