from django.apps import AppConfig


class AimosConfig(AppConfig):
    """The project package as an app: it owns the system metrics samples (DESIGN §2)."""

    name = "aimos"
    verbose_name = "System"
    default_auto_field = "django.db.models.BigAutoField"
