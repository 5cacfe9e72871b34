"""Use cases of executions that start and read runs: access to a user's runs and checkpoints,
starting a run (execute, chat, the compatible routes), a batch of runs or a run from a
checkpoint, and how long a request may wait for a run to end.

Elsewhere in the app: the event log (`events`), how a run ends (`outcomes`), pause, resume
and cancel (`control`), the run in its worker (`supervisor`, queued by `jobs.enqueue_run`),
batches as read (`batches`) and lost runs (`recovery`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from rq.job import Dependency

from agents.choices import AgentStatus, VersionStatus
from agents.models import Agent, AgentVersion
from agents.services import access_version
from core.errors import Conflict, NotFound, ServiceError
from executions import task_workspaces
from executions.jobs import enqueue_run
from executions.models import IDEMPOTENCY_TTL, Batch, Checkpoint, Execution, IdempotencyKey
from executions.waits import wait_until
from notifications import feed
from sandbox.limits import DEFAULTS

T = TypeVar("T")

# A run waits in the queue and starts its sandbox before its own timeout starts counting.
START_SLACK_SECONDS = 10


# --- Access ------------------------------------------------------------------------------------


def access_execution(user, execution_id) -> Execution:
    """The execution `user` may see, else NotFound (another user's run does not exist for them)."""
    try:
        return (
            Execution.objects.for_user(user).select_related("agent", "version").get(pk=execution_id)
        )
    except (Execution.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Execution not found") from None


def access_checkpoint(user, checkpoint_id) -> Checkpoint:
    try:
        return Checkpoint.objects.for_user(user).select_related("execution").get(pk=checkpoint_id)
    except (Checkpoint.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Checkpoint not found") from None


# --- Start -------------------------------------------------------------------------------------


def cap_timeout(version: AgentVersion, requested: int | None) -> int:
    """The run's timeout: asked for, else the manifest's, capped by the server maximum."""
    wanted = requested or version.manifest.get("timeout") or DEFAULTS.timeout_seconds
    return max(1, min(int(wanted), settings.AIMOS_MAX_TIMEOUT_SECONDS))


def runnable_version(agent: Agent, version: int | str | None = None) -> AgentVersion:
    """The version to run: the one asked for (it must be ready), else the current one."""
    if agent.status == AgentStatus.ARCHIVED:
        raise Conflict("The agent is archived and cannot be run")
    if version is not None:
        chosen = access_version(agent, version)
        if chosen.status != VersionStatus.READY:
            raise Conflict(f"Version {chosen.label} is {chosen.status}, not ready")
        return chosen
    if agent.current_version_id is None:
        raise Conflict(f"The agent is {agent.status}: it has no ready version to run")
    return agent.current_version


def start_execution(
    user,
    agent: Agent,
    *,
    input: Any = None,
    timeout_seconds: int | None = None,
    version: int | str | None = None,
    batch: Batch | None = None,
    parent: Execution | None = None,
    checkpoint: Checkpoint | None = None,
    state: Any = None,
    env: dict[str, str] | None = None,
    session_id=None,
    enqueue: bool = True,
) -> Execution:
    """Record a pending execution and queue it for a worker (after commit). With `session_id`
    the run is a task of that session (`workspaces.tasks`): its /workspace is the session's."""
    chosen = runnable_version(agent, version)
    execution = Execution.objects.create(
        agent=agent,
        version=chosen,
        user=user,
        batch=batch,
        parent=parent,
        source_checkpoint=checkpoint,
        input=input,
        initial_state=state,
        env=env or {},
        timeout_seconds=cap_timeout(chosen, timeout_seconds),
        session_id=session_id,
    )
    if enqueue:
        transaction.on_commit(lambda: enqueue_run(execution.pk))
    if batch is None:  # a batch announces itself once, in start_batch
        feed.notify(
            user.pk,
            "execution_started",
            {
                "execution_id": str(execution.pk),
                "agent_id": str(agent.pk),
                "agent_name": agent.name,
                "agent_count": 1,
                "parallel": False,
            },
        )
    return execution


# --- Idempotency -------------------------------------------------------------------------------

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True)
class Idempotency:
    """An `Idempotency-Key` and the fingerprint of the request that carried it."""

    key: str
    request_hash: str

    @classmethod
    def of(cls, key: str | None, route: str, data: Any) -> Idempotency | None:
        """None without a key; a 400 naming the header for a key that is empty, too long or
        not printable ASCII."""
        if key is None:
            return None
        key = key.strip()
        if (
            not key
            or len(key) > IDEMPOTENCY_KEY_LENGTH
            or not key.isascii()
            or not key.isprintable()
        ):
            raise ServiceError.invalid(
                IDEMPOTENCY_KEY_HEADER,
                f"Must be 1 to {IDEMPOTENCY_KEY_LENGTH} printable ASCII characters.",
            )
        canonical = json.dumps([route, data], sort_keys=True, default=str, separators=(",", ":"))
        return cls(key, hashlib.sha256(canonical.encode()).hexdigest())


def start_once(user, idempotency: Idempotency | None, start: Callable[[], T]) -> tuple[T, bool]:
    """What `start()` makes (an Execution or a Batch) and whether it was made by an earlier
    request with the same key (True: nothing was started now).

    The key's row and what `start()` writes commit together, so a key never names a run that
    does not exist. Of two concurrent requests with one key, PostgreSQL holds the second
    insert until the first commits, then the second finds the first's row: one run. A key
    used within `IDEMPOTENCY_TTL` for a different request is a 409."""
    if idempotency is None:
        return start(), False
    cutoff = timezone.now() - IDEMPOTENCY_TTL
    with transaction.atomic():
        IdempotencyKey.objects.filter(
            user=user, key=idempotency.key, created_at__lt=cutoff
        ).delete()
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(
                    user=user, key=idempotency.key, request_hash=idempotency.request_hash
                )
        except IntegrityError:
            earlier = IdempotencyKey.objects.select_related("execution", "batch").get(
                user=user, key=idempotency.key
            )
            if earlier.request_hash != idempotency.request_hash:
                raise Conflict(
                    "This Idempotency-Key was already used for a different request; "
                    "use a new key for a new request.",
                    code="idempotency_key_reused",
                ) from None
            return (earlier.execution or earlier.batch), True
        made = start()
        if isinstance(made, Batch):
            record.batch = made
        else:
            record.execution = made
        record.save(update_fields=["batch", "execution"])
    return made, False


# --- Waiting for the end -----------------------------------------------------------------------


def wait_seconds(execution: Execution, requested: float | None, *, until_end: bool) -> float:
    """How long a request may block waiting for the run to end: what it asked for; else, for
    clients that expect the outcome in the answer (`until_end`), the whole run (its timeout
    and START_SLACK_SECONDS to get started), otherwise not at all. Never more than
    AIMOS_MAX_WAIT_SECONDS."""
    if requested is None:
        requested = execution.timeout_seconds + START_SLACK_SECONDS if until_end else 0
    return max(0.0, min(float(requested), settings.AIMOS_MAX_WAIT_SECONDS))


def wait_for(
    execution: Execution, requested: float | None = None, *, until_end: bool = False
) -> Execution:
    """The execution once it has ended, or as it is after `wait_seconds(…)`."""
    seconds = wait_seconds(execution, requested, until_end=until_end)
    if not seconds:
        return execution
    return wait_until(execution, lambda e: e.is_terminal, seconds)


# --- Checkpoints -------------------------------------------------------------------------------


def restore_checkpoint(
    user, checkpoint: Checkpoint, *, modifications: dict | None = None
) -> Execution:
    """A new run of the same version whose `ctx.state` is the checkpoint's state (input may
    be changed through `modifications`)."""
    modifications = modifications or {}
    unknown = set(modifications) - {"input"}
    if unknown:
        raise _modification_error(unknown, "restore accepts only input; use fork to change more")
    return _run_from(user, checkpoint, modifications, version=checkpoint.execution.version.number)


def fork_checkpoint(
    user, checkpoint: Checkpoint, *, modifications: dict | None = None
) -> Execution:
    """A new run from the checkpoint's state with changes: `input`, `version`, `env`, `state`."""
    modifications = modifications or {}
    unknown = set(modifications) - {"input", "version", "env", "state", "timeout_seconds"}
    if unknown:
        raise _modification_error(unknown, "unknown modification")
    env = modifications.get("env")
    if env is not None and (
        not isinstance(env, dict)
        or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in env.items()
        )
    ):
        raise _modification_error(["env"], "A mapping of names to plain values.")
    version = modifications.get("version", checkpoint.execution.version.number)
    return _run_from(user, checkpoint, modifications, version=version)


def _modification_error(fields, message: str) -> ServiceError:
    first, *others = [f"modifications.{name}" for name in sorted(fields)]
    return ServiceError.invalid(
        first,
        message,
        detail="Invalid modifications",
        more=[(name, message) for name in others],
    )


def _run_from(user, checkpoint: Checkpoint, modifications: dict, *, version) -> Execution:
    """A run from the checkpoint; a task's checkpoint gives a task of the same session (its
    workspace as it is now: a checkpoint holds the agent's state, not the session's files)."""
    source = checkpoint.execution
    env = {**source.env, **{k: str(v) for k, v in (modifications.get("env") or {}).items()}}
    if source.session_id is not None:
        task_workspaces.check_task(source.session_id)  # as any task of the session
    with transaction.atomic():
        return start_execution(
            user,
            source.agent,
            input=modifications.get("input", source.input),
            timeout_seconds=modifications.get("timeout_seconds", source.timeout_seconds),
            version=version,
            parent=source,
            checkpoint=checkpoint,
            state=modifications.get("state", checkpoint.state),
            env=env,
            session_id=source.session_id,
        )


# --- Batches -------------------------------------------------------------------------------------


def start_batch(
    user,
    *,
    agent_ids=None,
    parallel: bool = True,
    timeout_seconds: int | None = None,
    input: Any = None,
) -> Batch:
    """Run several agents: all at once (as many as there are workers), or one after another."""
    agents = Agent.objects.for_user(user).select_related("current_version")
    if not agent_ids:
        # "Every ready agent" means the caller's own, for an admin too.
        agents = agents.filter(owner=user)
    if agent_ids:
        wanted = {str(agent_id) for agent_id in agent_ids}
        found = {str(agent.pk): agent for agent in agents.filter(pk__in=wanted)}
        missing = wanted - set(found)
        if missing:
            raise NotFound(f"Agent not found: {', '.join(sorted(missing))}")
        chosen = [found[str(agent_id)] for agent_id in agent_ids if str(agent_id) in found]
    else:
        chosen = [agent for agent in agents.filter(status=AgentStatus.READY) if agent.is_runnable]
    if not chosen:
        raise Conflict("No ready agent to run")
    for agent in chosen:
        runnable_version(agent)  # refuse the whole batch before starting any of it
    with transaction.atomic():
        batch = Batch.objects.create(
            user=user, parallel=parallel, input=input, timeout_seconds=timeout_seconds
        )
        executions = [
            start_execution(
                user,
                agent,
                input=input,
                timeout_seconds=timeout_seconds,
                batch=batch,
                enqueue=False,
            )
            for agent in chosen
        ]
        ids = [execution.pk for execution in executions]
        transaction.on_commit(lambda: _enqueue_batch(ids, parallel))
        feed.notify(
            user.pk,
            "execution_started",
            {
                "execution_id": str(batch.pk),
                "agent_count": len(executions),
                "parallel": parallel,
                "agent_ids": [str(agent.pk) for agent in chosen],
            },
        )
    return batch


def _enqueue_batch(execution_ids, parallel: bool) -> None:
    previous = None
    for execution_id in execution_ids:
        depends_on = None
        if not parallel and previous is not None:
            depends_on = Dependency(jobs=[previous], allow_failure=True)
        previous = enqueue_run(execution_id, depends_on=depends_on)
