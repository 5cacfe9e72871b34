"""What agents learn of their runs, from the app that runs them.

Runs are executions, a layer above agents: agents never import them. The executions side
plugs its queries in here when the project starts (`executions.agent_runs.connect()`, called
from `aimos.apps`), so the agent list's run numbers, the refusal to delete an agent
with runs in progress, and the agent page's recent runs and run form each have one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet


class AgentRuns(Protocol):
    def with_stats(self, agents: QuerySet) -> QuerySet:
        """`agents` annotated with `total_executions`, `successful_executions` and
        `last_execution` (when the newest run was created), in the same query."""

    def in_progress(self, agent) -> bool:
        """Whether a run of `agent` has not ended yet."""

    def recent(self, agent, limit: int) -> Sequence[Any]:
        """The newest runs of `agent`, newest first."""

    def start(self, user, agent, **options: Any) -> Any:
        """Start a run of `agent` for `user` (the run's service)."""


_runs: AgentRuns | None = None


def connect(runs: AgentRuns) -> None:
    global _runs
    _runs = runs


def runs() -> AgentRuns:
    if _runs is None:
        raise ImproperlyConfigured("No app told agents about their runs (see agents.runs)")
    return _runs
