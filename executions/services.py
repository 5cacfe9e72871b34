"""Use cases of executions: start, read, control, checkpoints, batches; and the event log.

The run itself (inside a worker) is `executions.supervisor`; everything that changes an
execution goes through the model's transition methods, and every event goes through
`record_events`, which numbers them without gaps and publishes them after commit.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Avg
from django.utils import timezone

from agents.models import Agent, AgentVersion
from agents.services import access_version
from aimos import feed
from core.errors import Conflict, NotFound, ServiceError
from executions.choices import TERMINAL_EVENTS, Control, ErrorType, ExecutionStatus
from executions.models import Batch, Checkpoint, Execution, ExecutionEvent

logger = logging.getLogger(__name__)

CONTROL_KEY = "aimos:control:{}"
REQUEUED_MESSAGE = "The worker stopped before the agent started; queued again"


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


def access_batch(user, batch_id) -> Batch:
    try:
        return Batch.objects.for_user(user).get(pk=batch_id)
    except (Batch.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Batch not found") from None


# --- Start -------------------------------------------------------------------------------------


def cap_timeout(version: AgentVersion, requested: int | None) -> int:
    """The run's timeout: asked for, else the manifest's, capped by the server maximum."""
    wanted = requested or version.manifest.get("timeout") or 30
    return max(1, min(int(wanted), settings.AIMOS_MAX_TIMEOUT_SECONDS))


def runnable_version(agent: Agent, version: int | str | None = None) -> AgentVersion:
    """The version to run: the one asked for (it must be ready), else the current one."""
    if agent.status == "archived":
        raise Conflict("The agent is archived and cannot be run")
    if version is not None:
        chosen = access_version(agent, version)
        if chosen.status != "ready":
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
    enqueue: bool = True,
) -> Execution:
    """Record a pending execution and queue it for a worker (after commit)."""
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


def run_job_id(execution_id, attempt: int) -> str:
    return f"run-{execution_id}-{attempt}"


def enqueue_run(execution_id, *, attempt: int = 0, depends_on=None):
    """Queue the run's job; its id names the attempt, so a lost job can be recognised."""
    import django_rq
    from rq import Callback

    from executions import jobs

    return django_rq.get_queue("runs").enqueue(
        jobs.run_execution,
        str(execution_id),
        job_id=run_job_id(execution_id, attempt),
        job_timeout=settings.AIMOS_MAX_TIMEOUT_SECONDS + settings.AIMOS_MAX_PAUSE_SECONDS + 300,
        result_ttl=3600,
        failure_ttl=86400,
        depends_on=depends_on,
        on_failure=Callback(jobs.run_job_failed),
    )


def wait_for(execution: Execution, seconds: float) -> Execution:
    """The execution once it has ended, or as it is after `seconds`."""
    deadline = time.monotonic() + max(0.0, min(seconds, settings.AIMOS_MAX_WAIT_SECONDS))
    while True:
        execution.refresh_from_db()
        if execution.is_terminal or time.monotonic() >= deadline:
            return execution
        time.sleep(0.02)


# --- Events --------------------------------------------------------------------------------------


def record_events(execution_id, items: list[tuple[str, dict]]) -> list[ExecutionEvent]:
    """Append events to the execution's log, numbered `last_seq + 1 …` without gaps, in one
    transaction (checkpoints stored alongside); they are published once it commits."""
    if not items:
        return []
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update()
            .only("id", "user_id", "last_seq")
            .get(pk=execution_id)
        )
        seq = execution.last_seq
        now = timezone.now()
        rows, checkpoints = [], []
        for kind, data in items:
            seq += 1
            if kind == "checkpoint":
                checkpoint = Checkpoint(
                    execution_id=execution.pk,
                    seq=seq,
                    label=str(data.get("label") or ""),
                    state=data.get("state"),
                )
                checkpoints.append(checkpoint)
                data = {"checkpoint_id": str(checkpoint.pk), "label": checkpoint.label or None}
            rows.append(
                ExecutionEvent(
                    execution_id=execution.pk, seq=seq, type=kind, data=data, timestamp=now
                )
            )
        Checkpoint.objects.bulk_create(checkpoints)
        ExecutionEvent.objects.bulk_create(rows)
        Execution.objects.filter(pk=execution.pk).update(last_seq=seq)
        transaction.on_commit(lambda: publish(execution.pk, [row.as_message() for row in rows]))
    return rows


def publish(execution_id, messages: list[dict]) -> None:
    """Send events to the channel-layer group of the execution, as one message.

    Not to the owner's group: the user feed (`aimos.feed`) carries lifecycle messages only,
    and every delta there would fill the buffers of feed sockets, which then drop messages.
    """
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None or not messages:
        return
    payload = {"type": "execution.events", "events": messages}

    try:
        async_to_sync(layer.group_send)(f"execution.{execution_id}", payload)
    except Exception:  # live delivery is best effort: the log in the database is the record
        logger.exception("could not publish events of execution %s", execution_id)


def events_after(execution: Execution, after: int = 0, limit: int | None = None):
    events = execution.events.filter(seq__gt=after).order_by("seq")
    return events[:limit] if limit else events


def finish(
    execution: Execution,
    status: str,
    *,
    reason: str = "",
    from_states=None,
    output: Any = None,
    error_type: str = "",
    duration_ms: int | None = None,
    peak_memory_mb: float | None = None,
    cpu_ms: int | None = None,
) -> bool:
    """End the execution with `status` and its terminal event, atomically. False (and no
    event) when the execution had already ended."""
    with transaction.atomic():
        ended = Execution.finish(
            execution.pk,
            status,
            from_states=from_states,
            output=output,
            error_message=reason if status != ExecutionStatus.COMPLETED else "",
            error_type=error_type,
            duration_ms=duration_ms,
            peak_memory_mb=peak_memory_mb,
            cpu_ms=cpu_ms,
        )
        if not ended:
            return False
        if status == ExecutionStatus.COMPLETED:
            count = Execution.objects.values_list("last_seq", flat=True).get(pk=execution.pk) + 1
            data = {
                "output": output,
                "metrics": {
                    "duration_ms": duration_ms,
                    "cpu_ms": cpu_ms,
                    "peak_memory_mb": peak_memory_mb,
                    "events": count,
                },
            }
        elif status == ExecutionStatus.FAILED:
            data = {"error": reason, "error_type": error_type}
        else:
            data = {"reason": reason}
        record_events(execution.pk, [(TERMINAL_EVENTS[status], data)])
        _log_outcome(execution, status, reason, error_type)
        _notify_finished(execution, status, duration_ms)
    return True


def _notify_finished(execution: Execution, status: str, duration_ms: int | None) -> None:
    """Tell the user's feed that a run ended; a batch's last run also ends the batch.

    The batch row is locked first, so of two runs of a batch ending at once, the one that
    takes the lock second sees the other's end committed: exactly one announces the batch.
    """
    run = {
        "agent_id": str(execution.agent_id),
        "agent_name": execution.agent.name,
        "status": status,
        "duration_ms": duration_ms,
    }
    if execution.batch_id is None:
        feed.notify(
            execution.user_id, "execution_completed", {"execution_id": str(execution.pk), **run}
        )
        return
    batch = Batch.objects.select_for_update().get(pk=execution.batch_id)
    feed.notify(
        execution.user_id,
        "agent_completed",
        {"execution_id": str(batch.pk), "run_id": str(execution.pk), **run},
    )
    summary = batch_summary(batch)
    if summary["finished"]:
        feed.notify(
            execution.user_id,
            "execution_completed",
            {
                "execution_id": str(batch.pk),
                "total_agents": summary["total"],
                "successful": summary["completed"],
                "failed": summary["failed"],
                "success_rate": summary["success_rate"],
            },
        )


def _log_outcome(execution: Execution, status: str, reason: str, error_type: str) -> None:
    from agents.choices import LogLevel, LogSource
    from agents.services import log

    short = str(execution.pk)[:8]
    message = f"Execution {short} {status}" + (f": {reason.splitlines()[0]}" if reason else "")
    log(
        execution.agent,
        message[:500],
        source=LogSource.RUNTIME,
        level=LogLevel.INFO if status == ExecutionStatus.COMPLETED else LogLevel.ERROR,
        metadata={
            "execution_id": str(execution.pk),
            "status": status,
            "error_type": error_type or None,
        },
    )


# --- Control -----------------------------------------------------------------------------------


def _signal_worker(execution_id, control: str) -> None:
    import django_rq

    connection = django_rq.get_connection("runs")
    key = CONTROL_KEY.format(execution_id)
    connection.rpush(key, control)
    connection.expire(key, settings.AIMOS_MAX_TIMEOUT_SECONDS + settings.AIMOS_MAX_PAUSE_SECONDS)


def _await_change(execution: Execution, done, seconds: float) -> Execution:
    deadline = time.monotonic() + seconds
    while True:
        execution.refresh_from_db()
        if done(execution) or time.monotonic() >= deadline:
            return execution
        time.sleep(0.02)


def cancel_execution(execution: Execution, *, wait: float = 30.0) -> Execution:
    """Cancel: a pending run ends before it starts; a running one ends when every process of
    it is gone (the worker kills the sandbox, then records `cancelled`)."""
    if execution.is_terminal:
        raise Conflict(f"The execution already ended ({execution.status})")
    if finish(
        execution,
        ExecutionStatus.CANCELLED,
        reason="cancelled before it started",
        from_states=[ExecutionStatus.PENDING],
    ):
        execution.refresh_from_db()
        return execution
    if not Execution.request_control(execution.pk, Control.CANCEL):
        execution.refresh_from_db()
        if execution.is_terminal:
            raise Conflict(f"The execution already ended ({execution.status})")
        raise Conflict(f"The execution is {execution.status} and cannot be cancelled now")
    _signal_worker(execution.pk, Control.CANCEL)
    return _await_change(execution, lambda e: e.is_terminal, wait)


def pause_execution(execution: Execution, *, wait: float = 10.0) -> Execution:
    if not Execution.request_control(execution.pk, Control.PAUSE):
        execution.refresh_from_db()
        raise Conflict(f"Only a running execution can be paused; this one is {execution.status}")
    _signal_worker(execution.pk, Control.PAUSE)
    return _await_change(execution, lambda e: e.status != ExecutionStatus.RUNNING, wait)


def resume_execution(execution: Execution, *, wait: float = 10.0) -> Execution:
    if not Execution.request_control(execution.pk, Control.RESUME):
        execution.refresh_from_db()
        raise Conflict(f"Only a paused execution can be resumed; this one is {execution.status}")
    _signal_worker(execution.pk, Control.RESUME)
    return _await_change(execution, lambda e: e.status != ExecutionStatus.PAUSED, wait)


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
        raise ServiceError(
            "Invalid modifications",
            code="validation_error",
            errors=[
                {"field": "modifications.env", "message": "A mapping of names to plain values."}
            ],
        )
    version = modifications.get("version", checkpoint.execution.version.number)
    return _run_from(user, checkpoint, modifications, version=version)


def _modification_error(fields, message: str) -> ServiceError:
    return ServiceError(
        "Invalid modifications",
        code="validation_error",
        errors=[{"field": f"modifications.{name}", "message": message} for name in sorted(fields)],
    )


def _run_from(user, checkpoint: Checkpoint, modifications: dict, *, version) -> Execution:
    source = checkpoint.execution
    env = {**source.env, **{k: str(v) for k, v in (modifications.get("env") or {}).items()}}
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
        chosen = [agent for agent in agents.filter(status="ready") if agent.is_runnable]
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
    from rq.job import Dependency

    previous = None
    for execution_id in execution_ids:
        depends_on = None
        if not parallel and previous is not None:
            depends_on = Dependency(jobs=[previous], allow_failure=True)
        previous = enqueue_run(execution_id, depends_on=depends_on)


def batch_summary(batch: Batch) -> dict:
    statuses = list(batch.executions.values_list("status", flat=True))
    total = len(statuses)
    done = sum(status in ExecutionStatus.terminal() for status in statuses)
    succeeded = statuses.count(ExecutionStatus.COMPLETED)
    return {
        "total": total,
        "completed": succeeded,
        "failed": done - succeeded,
        "active": total - done,
        "finished": done == total,
        "success_rate": round(100.0 * succeeded / done, 1) if done else 0.0,
    }


def estimated_duration(batch: Batch) -> int:
    """Seconds the batch should take: per run, the average duration of its agent's completed
    runs (its timeout when the agent has none yet); the longest of them when the batch runs in
    parallel, their sum when one after another."""
    runs = list(batch.executions.values_list("agent_id", "timeout_seconds"))
    if not runs:
        return 0
    averages = dict(
        Execution.objects.filter(
            agent_id__in={agent_id for agent_id, _ in runs},
            status=ExecutionStatus.COMPLETED,
            duration_ms__isnull=False,
        )
        .order_by()
        .values("agent_id")
        .annotate(average=Avg("duration_ms"))
        .values_list("agent_id", "average")
    )
    seconds = [
        averages[agent_id] / 1000 if agent_id in averages else timeout for agent_id, timeout in runs
    ]
    return max(1, math.ceil(max(seconds) if batch.parallel else sum(seconds)))


# --- Lost runs ---------------------------------------------------------------------------------


def sweep_lost_runs() -> dict:
    """Runs whose worker died (lease expired) end `failed`/`lost`, or are queued again once when
    the agent never started; pending runs whose job vanished are queued again."""
    now = timezone.now()
    lost = requeued = 0
    expired = Execution.objects.filter(
        status__in=[ExecutionStatus.RUNNING, ExecutionStatus.PAUSED], lease_expires_at__lt=now
    )
    for execution in expired.select_related("agent"):
        if not execution.sandbox_started and execution.attempt < 2:
            with transaction.atomic():
                if Execution.requeue(execution.pk):
                    record_events(
                        execution.pk,
                        [
                            (
                                "log",
                                {
                                    "level": "warning",
                                    "message": REQUEUED_MESSAGE,
                                    "source": "platform",
                                },
                            )
                        ],
                    )
                    transaction.on_commit(
                        lambda pk=execution.pk, n=execution.attempt: enqueue_run(pk, attempt=n)
                    )
                    requeued += 1
            continue
        if finish(
            execution,
            ExecutionStatus.FAILED,
            reason="The worker running this execution stopped",
            error_type=ErrorType.LOST,
            from_states=[ExecutionStatus.RUNNING, ExecutionStatus.PAUSED],
        ):
            lost += 1
            _kill_orphan(execution)
    return {"lost": lost, "requeued": requeued, "pending_requeued": _requeue_vanished_jobs()}


def _requeue_vanished_jobs() -> int:
    """Pending runs whose queued job no longer exists (e.g. Redis lost it) are queued again."""
    import django_rq
    from rq.job import Job

    connection = django_rq.get_connection("runs")
    cutoff = timezone.now() - timedelta(seconds=settings.AIMOS_RUN_LEASE_SECONDS * 2)
    pending = Execution.objects.filter(status=ExecutionStatus.PENDING, created_at__lt=cutoff)
    count = 0
    for pk, attempt in pending.values_list("pk", "attempt"):
        if not Job.exists(run_job_id(pk, attempt), connection=connection):
            enqueue_run(pk, attempt=attempt)
            count += 1
    return count


def _kill_orphan(execution: Execution) -> None:
    """Make sure nothing of a lost run goes on in its sandbox."""
    from sandbox import get_backend

    try:
        get_backend(execution.version.sandbox_backend or None).kill_run(str(execution.pk))
    except Exception:  # the run is recorded as lost either way
        logger.exception("could not clean the sandbox of lost execution %s", execution.pk)
