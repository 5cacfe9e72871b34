from django.apps import AppConfig


class AimosConfig(AppConfig):
    """The project package as an app: it owns the system metrics samples (DESIGN §2)."""

    name = "aimos"
    verbose_name = "System"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Agents sit below executions and never import them: the project tells agents
        # about their runs.
        from executions import agent_runs

        agent_runs.connect()
        # Sessions sit above executions (a task is a run): the project tells executions
        # where a task's workspace is.
        from executions import task_workspaces
        from workspaces.services import check_task, task_mount

        task_workspaces.connect(task_mount, check_task)
