"""The API's objects, as the JSON the server sends (TypedDicts: plain dicts with types), and
the one dataclass the client builds itself, `Event`.

Fields follow the OpenAPI schema at `/api/schema/`; times are ISO 8601 strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

ExecutionStatus = Literal[
    "pending", "running", "paused", "completed", "failed", "cancelled", "timed_out"
]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out"})
# The events that end a run's log, one per terminal status.
TERMINAL_EVENTS = frozenset({"run_completed", "run_failed", "run_cancelled", "run_timed_out"})
STATUS_OF_TERMINAL_EVENT = {
    "run_completed": "completed",
    "run_failed": "failed",
    "run_cancelled": "cancelled",
    "run_timed_out": "timed_out",
}


class TokenPair(TypedDict):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


class User(TypedDict):
    id: str
    username: str
    email: str
    full_name: str
    is_active: bool
    is_admin: bool
    created_at: str
    last_login: str | None


class ApiKey(TypedDict):
    id: str
    name: str
    key_prefix: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None


class NewApiKey(ApiKey):
    key: str  # the whole key: shown this once


class Agent(TypedDict):
    id: str
    name: str
    description: str
    role: str
    tags: list[str]
    status: Literal["draft", "building", "ready", "failed", "archived"]
    user_id: str
    current_version_id: str | None
    current_version: str | None
    total_executions: int
    successful_executions: int
    success_rate: float
    last_execution: str | None
    created_at: str
    updated_at: str


class AgentVersion(TypedDict):
    id: str
    agent_id: str
    number: int
    version: str  # "v3"
    status: Literal["queued", "building", "ready", "failed"]
    artifact_sha256: str
    artifact_size: int
    manifest: dict[str, Any]
    entrypoint: str
    build_log: str
    created_at: str
    updated_at: str
    build_started_at: str | None
    build_finished_at: str | None


class AgentLog(TypedDict):
    timestamp: str
    level: str
    message: str
    source: str
    metadata: Any


class Execution(TypedDict):
    id: str
    agent_id: str
    agent_name: str
    agent_version_id: str
    version: str
    user_id: str
    batch_id: str | None
    parent_id: str | None
    source_checkpoint_id: str | None
    status: ExecutionStatus
    error_type: str
    input: Any
    output: Any
    error_message: str
    timeout_seconds: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None
    peak_memory_mb: float | None
    cpu_ms: int | None
    attempt: int
    events: int  # the run's last seq


class LogEntry(TypedDict):
    timestamp: str
    level: str
    message: str
    source: str
    metadata: dict[str, Any]


class Checkpoint(TypedDict):
    id: str
    execution_id: str
    seq: int
    label: str
    created_at: str


class CheckpointDetail(Checkpoint):
    state: Any


class BatchStarted(TypedDict):
    execution_id: str  # the batch's id
    status: str
    started_at: str
    agent_count: int
    estimated_duration: int


class Batch(TypedDict):
    id: str
    user_id: str
    parallel: bool
    input: Any
    timeout_seconds: int | None
    created_at: str
    status: str
    total: int
    completed: int
    failed: int
    active: int
    finished: bool
    success_rate: float
    executions: list[Execution]


class ChatResponse(TypedDict):
    run_id: str
    response: Any
    status: ExecutionStatus
    error: str
    error_type: str
    metrics: dict[str, Any]


class Webhook(TypedDict):
    id: str
    url: str
    events: list[str]
    description: str
    is_active: bool
    created_at: str
    updated_at: str


class NewWebhook(Webhook):
    secret: str  # the signing secret: shown this once


class Delivery(TypedDict):
    id: str
    event: str
    payload: Any
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    response_status: int | None
    error: str
    duration_ms: int | None
    log: Any
    created_at: str
    delivered_at: str | None


class Health(TypedDict):
    status: str
    version: str
    timestamp: str
    checks: dict[str, Any]


class SystemStatus(TypedDict):
    status: Literal["healthy", "degraded", "unhealthy"]
    uptime_seconds: int
    version: str
    environment: str
    total_agents: int
    active_agents: int
    system_health_score: float
    last_execution: str | None
    checks: dict[str, str]
    queues: dict[str, int | None]
    workers: dict[str, Any]
    sandbox: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """One event of a run's log: `seq` 1, 2, 3 … with no gaps; `data` as DESIGN §5 says
    (`content_delta`: {content}, `log`: {level, message, source}, `run_completed`:
    {output, metrics}, …)."""

    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    execution_id: str | None = None
    timestamp: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    @classmethod
    def from_json(cls, message: dict[str, Any]) -> Event:
        """From the JSON list of `GET executions/{id}/events` (whole events)."""
        data = message.get("data")
        return cls(
            seq=int(message["seq"]),
            type=str(message["type"]),
            data=data if isinstance(data, dict) else {"value": data},
            execution_id=message.get("execution_id"),
            timestamp=message.get("timestamp"),
        )

    @classmethod
    def from_sse(cls, seq: str, type_: str, data: str, execution_id: str | None) -> Event:
        """From an SSE frame (`id: <seq>`, `event: <type>`, `data: <JSON>`)."""
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"value": data}
        return cls(
            seq=int(seq),
            type=type_,
            data=parsed if isinstance(parsed, dict) else {"value": parsed},
            execution_id=execution_id,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "data": self.data,
            "execution_id": self.execution_id,
            "timestamp": self.timestamp,
        }
