from django.apps import AppConfig


class WorkspacesConfig(AppConfig):
    """Sessions: long-lived sandboxes with a workspace (DESIGN §9). The label is `workspaces`:
    `sessions` is Django's own."""

    name = "workspaces"
    verbose_name = "Sessions"
    default_auto_field = "django.db.models.BigAutoField"
