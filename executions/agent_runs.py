"""The runs of agents as the agents app sees them (`agents.runs`): their numbers, whether one
is in progress, the newest ones, and starting one. Connected when the project starts."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max, Q, QuerySet

from agents import runs
from executions import services
from executions.choices import ExecutionStatus
from executions.models import Execution


class ExecutionRuns:
    def with_stats(self, agents: QuerySet) -> QuerySet:
        return agents.annotate(
            total_executions=Count("executions"),
            successful_executions=Count(
                "executions", filter=Q(executions__status=ExecutionStatus.COMPLETED)
            ),
            last_execution=Max("executions__created_at"),
        )

    def in_progress(self, agent) -> bool:
        return Execution.objects.filter(agent=agent, status__in=ExecutionStatus.active()).exists()

    def recent(self, agent, limit: int) -> list[Execution]:
        return list(
            Execution.objects.filter(agent=agent)
            .select_related("version")
            .order_by("-created_at")[:limit]
        )

    def start(self, user, agent, **options: Any) -> Execution:
        return services.start_execution(user, agent, **options)


def connect() -> None:
    runs.connect(ExecutionRuns())
