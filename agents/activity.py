"""An agent's log: build and runtime events worth a person's attention (`AgentLog`)."""

from __future__ import annotations

from agents.choices import LogLevel, LogSource
from agents.models import Agent, AgentLog, AgentVersion


def log(
    agent: Agent,
    message: str,
    *,
    source: str = LogSource.BUILD,
    level: str = LogLevel.INFO,
    metadata: dict | None = None,
) -> AgentLog:
    return AgentLog.objects.create(
        agent=agent, message=message, source=source, level=level, metadata=metadata or {}
    )


def version_meta(version: AgentVersion) -> dict:
    """What a log entry about a version records of it."""
    return {"version_id": str(version.pk), "version": version.label, "status": version.status}
