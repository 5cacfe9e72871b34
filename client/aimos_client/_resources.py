"""The API's resources, written once for both clients.

Each method returns what its transport's `run` makes of a `Call` (or of a generator of
calls): the result with `Client`, an awaitable of it with `AsyncClient`. The methods that
stream (`executions.stream`, `chat_stream`) and wait on a stream live in the clients.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimos_client._transport import Call, Sleep
from aimos_client.errors import BuildFailedError, NotFoundError, WaitTimeoutError
from aimos_client.manifest import load_manifest
from aimos_client.models import Event
from aimos_client.packing import Package, pack

if TYPE_CHECKING:
    from aimos_client.models import Agent, AgentVersion

UNSET: Any = object()
UPLOAD_CHUNK = 64 * 1024
BUILD_DONE = ("ready", "failed")

ProgressCallback = Callable[[int, int], None]  # (bytes sent, bytes in all)
LogCallback = Callable[[str], None]  # one line of a build log, without its newline


def is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _page(limit: int | None, offset: int | None) -> dict[str, Any]:
    return {"limit": limit, "offset": offset}


def find_agent(ref: str) -> Generator[Call, Any, dict]:
    """The agent `ref` names: its id, or the name of one of the caller's agents."""
    if is_uuid(ref):
        return (yield Call("GET", f"/agents/{ref}"))
    agents = yield Call("GET", "/agents", params={"search": ref, "limit": 1000})
    matches = [agent for agent in agents if agent.get("name") == ref]
    if len(matches) > 1:  # an admin sees everyone's agents: prefer the caller's own
        me = yield Call("GET", "/auth/me")
        matches = [agent for agent in matches if agent.get("user_id") == me["id"]] or matches
    if not matches:
        raise NotFoundError(404, f"No agent named {ref!r}", "not_found")
    return matches[0]


def agent_id_of(ref: str) -> Generator[Call, Any, str]:
    if is_uuid(ref):
        return str(ref)
    agent = yield from find_agent(ref)
    return agent["id"]


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "agent.tar.gz"


def upload_call(
    agent_id: str, data: bytes, filename: str, progress: ProgressCallback | None, timeout: float
) -> Call:
    """A multipart upload of `data` as the field `file`, sent in pieces so that `progress`
    hears how far it is."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{_safe_filename(filename)}"\r\n'
        "Content-Type: application/gzip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    total = len(data)

    def pieces() -> Iterator[bytes]:
        yield head
        for start in range(0, total, UPLOAD_CHUNK):
            piece = data[start : start + UPLOAD_CHUNK]
            yield piece
            if progress is not None:
                progress(start + len(piece), total)
        if progress is not None and total == 0:
            progress(0, 0)
        yield tail

    async def apieces() -> AsyncIterator[bytes]:
        for piece in pieces():
            yield piece

    return Call(
        "POST",
        f"/agents/{agent_id}/versions",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + total + len(tail)),
        },
        content=pieces,
        acontent=apieces,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Deployment:
    """What `deploy` did: the agent (created when it did not exist), the new version as the
    build left it, and the package that was uploaded."""

    agent: Agent
    version: AgentVersion
    package: Package
    created: bool


class Resource:
    def __init__(self, client: Any) -> None:
        self._client = client

    def _run(self, operation: Any) -> Any:
        return self._client._transport.run(operation)


class Auth(Resource):
    """Log in, tokens, the current user."""

    def login(self, username: str, password: str):
        """Exchange a username (or email) and password for a token pair (TokenPair); the
        client then sends the access token."""

        def operation():
            tokens = yield Call(
                "POST", "/auth/login", json={"username": username, "password": password}
            )
            self._client._use_token(tokens["access_token"])
            return tokens

        return self._run(operation())

    def refresh(self, refresh_token: str):
        def operation():
            tokens = yield Call("POST", "/auth/refresh", json={"refresh_token": refresh_token})
            self._client._use_token(tokens["access_token"])
            return tokens

        return self._run(operation())

    def logout(self, refresh_token: str | None = None):
        body = {"refresh_token": refresh_token} if refresh_token else {}
        return self._run(Call("POST", "/auth/logout", json=body))

    def register(self, username: str, email: str, password: str, full_name: str = ""):
        body = {"username": username, "email": email, "password": password}
        if full_name:
            body["full_name"] = full_name
        return self._run(Call("POST", "/auth/register", json=body))

    def me(self):
        """The user the client is authenticated as (User)."""
        return self._run(Call("GET", "/auth/me"))

    whoami = me


class ApiKeys(Resource):
    """The caller's API keys: the whole key is shown once, by `create`."""

    def list(self, *, limit: int | None = None, offset: int | None = None):
        return self._run(Call("GET", "/api-keys", params=_page(limit, offset)))

    def create(self, name: str, *, expires_at: str | None = None):
        """A new key (NewApiKey); its `key` is shown this once."""
        body: dict[str, Any] = {"name": name}
        if expires_at is not None:
            body["expires_at"] = expires_at
        return self._run(Call("POST", "/api-keys", json=body))

    def revoke(self, key_id: str):
        return self._run(Call("DELETE", f"/api-keys/{key_id}"))


class Agents(Resource):
    """Agents: a name, a description and versions. `agent` arguments take an id or a name."""

    def list(
        self,
        *,
        status: str | None = None,
        tag: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ):
        params = {"status": status, "tag": tag, "search": search, **_page(limit, offset)}
        return self._run(Call("GET", "/agents", params=params))

    def get(self, agent: str):
        return self._run(find_agent(agent))

    def create(
        self, name: str, *, description: str = "", role: str = "", tags: list[str] | None = None
    ):
        body: dict[str, Any] = {"name": name, "description": description, "role": role}
        if tags is not None:
            body["tags"] = tags
        return self._run(Call("POST", "/agents", json=body))

    def update(self, agent: str, **fields: Any):
        """Change name, description, role, tags or status (PATCH)."""

        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield Call("PATCH", f"/agents/{agent_id}", json=fields))

        return self._run(operation())

    def archive(self, agent: str):
        """Archive the agent: it no longer runs; its runs and versions are kept."""
        return self.update(agent, status="archived")

    def restore(self, agent: str):
        """Bring an archived agent back: it gets the status its versions give it (ready when
        its current version is built) and can run and take new versions again."""
        # Any status but `archived` asks the server to un-archive; it sets the real one.
        return self.update(agent, status="draft")

    def delete(self, agent: str):
        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield Call("DELETE", f"/agents/{agent_id}"))

        return self._run(operation())

    def logs(
        self,
        agent: str,
        *,
        source: str | None = None,
        level: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ):
        def operation():
            agent_id = yield from agent_id_of(agent)
            params = {"source": source, "level": level, **_page(limit, offset)}
            return (yield Call("GET", f"/agents/{agent_id}/logs", params=params))

        return self._run(operation())


class Versions(Resource):
    """An agent's versions: each upload is one, built in the background."""

    def list(self, agent: str, *, limit: int | None = None, offset: int | None = None):
        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield Call("GET", f"/agents/{agent_id}/versions", params=_page(limit, offset)))

        return self._run(operation())

    def get(self, agent: str, number: int | str):
        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield Call("GET", f"/agents/{agent_id}/versions/{number}"))

        return self._run(operation())

    def rebuild(self, agent: str, number: int | str):
        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield Call("POST", f"/agents/{agent_id}/versions/{number}/rebuild"))

        return self._run(operation())

    def artifact(self, agent: str, number: int | str):
        """The uploaded archive of the version (bytes)."""

        def operation():
            agent_id = yield from agent_id_of(agent)
            return (
                yield Call(
                    "GET",
                    f"/agents/{agent_id}/versions/{number}/artifact",
                    parse=lambda response: response.content,
                )
            )

        return self._run(operation())

    def upload(
        self,
        agent: str,
        source: str | Path | bytes,
        *,
        progress: ProgressCallback | None = None,
        filename: str | None = None,
    ):
        """Upload a new version (AgentVersion, `queued`): `source` is a folder (packed, its
        `.aimosignore`/`.gitignore` honoured), a `.tar.gz` file, or the archive's bytes.
        `progress(sent, total)` hears how much of the archive has been sent."""
        if isinstance(source, bytes | bytearray):
            data, name = bytes(source), filename or "agent.tar.gz"
        else:
            path = Path(source)
            if path.is_dir():
                data, name = pack(path).data, filename or f"{path.resolve().name}.tar.gz"
            else:
                data, name = path.read_bytes(), filename or path.name
        timeout = self._client.settings.upload_timeout

        def operation():
            agent_id = yield from agent_id_of(agent)
            return (yield upload_call(agent_id, data, name, progress, timeout))

        return self._run(operation())

    def wait(
        self,
        agent: str,
        number: int | str,
        *,
        on_log: LogCallback | None = None,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ):
        """Wait for the version's build to end and return it (AgentVersion). `on_log` hears
        each line of the build log (without its newline), once, as the build writes it. A
        failed build raises
        BuildFailedError (with the version and its log) unless `raise_on_failure` is False."""
        return self._run(
            wait_for_build(
                agent,
                number,
                on_log=on_log,
                timeout=timeout,
                raise_on_failure=raise_on_failure,
                interval=self._client.settings.poll_interval,
            )
        )


class LineSplitter:
    """Turns the growing text of a log into whole lines, each given once to `on_line`
    (without its newline); `flush()` gives the last line when it has no newline."""

    def __init__(self, on_line: LogCallback | None) -> None:
        self.on_line = on_line
        self.seen = ""  # the log as far as it was read
        self.pending = ""  # its last line, not ended yet

    def update(self, log: str) -> None:
        if log == self.seen:
            return
        if log.startswith(self.seen):
            added = log[len(self.seen) :]
        else:  # the log was written anew (a rebuild): the new one from its start
            self.flush()
            added = log
        self.seen = log
        *lines, self.pending = (self.pending + added).split("\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            self._emit(line)

    def _emit(self, line: str) -> None:
        if self.on_line is not None:
            self.on_line(line.removesuffix("\r"))


def wait_for_build(
    agent: str,
    number: int | str,
    *,
    on_log: LogCallback | None,
    timeout: float | None,
    raise_on_failure: bool,
    interval: float,
) -> Generator[Any, Any, dict]:
    # The build log grows in the version row (written at most twice a second while pip
    # runs); the API has no stream of it, so it is read again until the build ends, and
    # what was added is cut into lines for `on_log`.
    agent_id = yield from agent_id_of(agent)
    deadline = None if timeout is None else time.monotonic() + timeout
    lines = LineSplitter(on_log)
    while True:
        version = yield Call("GET", f"/agents/{agent_id}/versions/{number}")
        lines.update(version.get("build_log") or "")
        if version["status"] in BUILD_DONE:
            lines.flush()
            if version["status"] == "failed" and raise_on_failure:
                raise BuildFailedError(version)
            return version
        if deadline is not None and time.monotonic() > deadline:
            lines.flush()
            raise WaitTimeoutError(
                f"the build of {version.get('version')} did not end within {timeout:g} s"
            )
        yield Sleep(interval)


def deploy_operation(
    folder: str | Path,
    *,
    agent: str | None,
    progress: ProgressCallback | None,
    on_log: LogCallback | None,
    wait: bool,
    timeout: float | None,
    upload_timeout: float,
    interval: float,
    on_packed: Callable[[Package], None] | None = None,
    on_uploaded: Callable[[dict, dict], None] | None = None,
) -> Generator[Any, Any, Deployment]:
    manifest = load_manifest(folder)
    package = pack(folder)
    if on_packed is not None:
        on_packed(package)
    name = agent or manifest["name"]
    created = False
    try:
        found = yield from find_agent(name)
    except NotFoundError:
        if is_uuid(name):
            raise
        found = yield Call("POST", "/agents", json={"name": name})
        created = True
    version = yield upload_call(
        found["id"], package.data, f"{manifest['name']}.tar.gz", progress, upload_timeout
    )
    if on_uploaded is not None:
        on_uploaded(found, version)
    if wait:
        version = yield from wait_for_build(
            found["id"],
            version["number"],
            on_log=on_log,
            timeout=timeout,
            raise_on_failure=False,
            interval=interval,
        )
        found = yield Call("GET", f"/agents/{found['id']}")
    return Deployment(agent=found, version=version, package=package, created=created)


class Executions(Resource):
    """Runs: start, read, control. `stream` (events as they happen) is the client's own."""

    def create(
        self,
        agent: str,
        input: Any = None,  # noqa: A002 (the API's name)
        *,
        version: int | str | None = None,
        timeout_seconds: int | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ):
        """Run `agent` (id or name) on `input` (Execution). With `wait` (seconds, capped by
        the server) the answer comes when the run ended, or after `wait` as it is then."""
        body: dict[str, Any] = {"agent_id": str(agent), "input": input}
        if version is not None:
            body["version"] = version
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        if wait is not None:
            body["wait"] = wait
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        timeout = None if wait is None else self._client.settings.timeout + float(wait)
        call = Call("POST", "/executions", json=body, headers=headers, timeout=timeout)

        def operation():
            try:
                return (yield call)
            except NotFoundError as exc:
                # The server says "Agent not found"; by a name, say which, as `agents.get` does.
                if is_uuid(agent) or "agent" not in exc.detail.lower():
                    raise
                raise NotFoundError(
                    404, f"No agent named {str(agent)!r}", exc.code, exc.errors, body=exc.body
                ) from None

        return self._run(operation())

    execute = create

    def get(self, execution_id: str):
        return self._run(Call("GET", f"/executions/{execution_id}"))

    def list(
        self,
        *,
        agent_id: str | None = None,
        agent_version_id: str | None = None,
        status: str | None = None,
        batch: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        active: bool = False,
    ):
        """The caller's runs, newest first (`active`: only pending, running or paused)."""
        params = {
            "agent_id": agent_id,
            "agent_version_id": agent_version_id,
            "status": status,
            "batch": batch,
            "created_after": created_after,
            "created_before": created_before,
            **_page(limit, offset),
        }
        path = "/executions/active" if active else "/executions"
        return self._run(Call("GET", path, params=params))

    def events(self, execution_id: str, *, after: int = 0, limit: int | None = None):
        """The run's events after `after` as stored now (list of Event); `stream` follows."""
        return self._run(
            Call(
                "GET",
                f"/executions/{execution_id}/events",
                params={"after": after, "limit": limit},
                headers={"Accept": "application/json"},
                parse=lambda response: [Event.from_json(item) for item in response.json()],
            )
        )

    def logs(self, execution_id: str, *, limit: int | None = None, offset: int | None = None):
        """The run's `log` events as log entries (LogEntry), oldest first."""
        return self._run(
            Call("GET", f"/executions/{execution_id}/logs", params=_page(limit, offset))
        )

    def cancel(self, execution_id: str):
        """Cancel; answers once every process of the run is gone (Execution)."""
        return self._run(
            Call("POST", f"/executions/{execution_id}/cancel", timeout=self._control_timeout)
        )

    def pause(self, execution_id: str):
        return self._run(
            Call("POST", f"/executions/{execution_id}/pause", timeout=self._control_timeout)
        )

    def resume(self, execution_id: str):
        return self._run(
            Call("POST", f"/executions/{execution_id}/resume", timeout=self._control_timeout)
        )

    @property
    def _control_timeout(self) -> float:
        # The server answers a cancel once the sandbox is gone, or after 30 s.
        return max(self._client.settings.timeout, 45.0)

    def checkpoints(
        self, execution_id: str, *, limit: int | None = None, offset: int | None = None
    ):
        return self._run(
            Call("GET", f"/executions/{execution_id}/checkpoints", params=_page(limit, offset))
        )


class Checkpoints(Resource):
    """Checkpoints saved by runs (`ctx.checkpoint`): read one, restore it, fork it."""

    def get(self, checkpoint_id: str):
        return self._run(Call("GET", f"/checkpoints/{checkpoint_id}"))

    def restore(self, checkpoint_id: str, *, input: Any = UNSET):  # noqa: A002
        """A new run of the same version starting from the checkpoint's state (Execution)."""
        modifications = {} if input is UNSET else {"input": input}
        body = {"create_new_run": True, "modifications": modifications}
        return self._run(Call("POST", f"/checkpoints/{checkpoint_id}/restore", json=body))

    def fork(
        self,
        checkpoint_id: str,
        *,
        input: Any = UNSET,  # noqa: A002
        version: int | str | None = None,
        env: dict[str, str] | None = None,
        state: Any = UNSET,
        timeout_seconds: int | None = None,
    ):
        """A new run from the checkpoint's state with changes (Execution)."""
        changes: dict[str, Any] = {}
        if input is not UNSET:
            changes["input"] = input
        if state is not UNSET:
            changes["state"] = state
        if version is not None:
            changes["version"] = version
        if env is not None:
            changes["env"] = env
        if timeout_seconds is not None:
            changes["timeout_seconds"] = timeout_seconds
        return self._run(
            Call("POST", f"/checkpoints/{checkpoint_id}/fork", json={"modifications": changes})
        )


class Batches(Resource):
    """Several agents run by one request."""

    def start(
        self,
        agent_ids: list[str] | None = None,
        *,
        input: Any = None,  # noqa: A002
        parallel: bool = True,
        timeout_seconds: int | None = None,
        idempotency_key: str | None = None,
    ):
        """Run the agents (every ready one of yours when `agent_ids` is None): BatchStarted,
        whose `execution_id` is the batch's id."""
        body: dict[str, Any] = {"parallel": parallel, "input": input}
        if agent_ids is not None:
            body["agent_ids"] = list(agent_ids)
        if timeout_seconds is not None:
            body["timeout_seconds"] = timeout_seconds
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._run(Call("POST", "/execute", json=body, headers=headers))

    def get(self, batch_id: str):
        return self._run(Call("GET", f"/batches/{batch_id}"))


class Webhooks(Resource):
    """Webhooks: signed deliveries of events (check them with `aimos_client.webhooks.verify`)."""

    def list(self, *, limit: int | None = None, offset: int | None = None):
        return self._run(Call("GET", "/webhooks", params=_page(limit, offset)))

    def get(self, webhook_id: str):
        return self._run(Call("GET", f"/webhooks/{webhook_id}"))

    def create(
        self,
        url: str,
        events: list[str] | tuple[str, ...] = ("*",),
        *,
        description: str = "",
        is_active: bool = True,
    ):
        """A new webhook (NewWebhook); its signing `secret` is shown this once."""
        body = {
            "url": url,
            "events": list(events),
            "description": description,
            "is_active": is_active,
        }
        return self._run(Call("POST", "/webhooks", json=body))

    def update(self, webhook_id: str, **fields: Any):
        """Change url, events, description or is_active (PATCH)."""
        return self._run(Call("PATCH", f"/webhooks/{webhook_id}", json=fields))

    def delete(self, webhook_id: str):
        return self._run(Call("DELETE", f"/webhooks/{webhook_id}"))

    def deliveries(self, webhook_id: str, *, limit: int | None = None, offset: int | None = None):
        return self._run(
            Call("GET", f"/webhooks/{webhook_id}/deliveries", params=_page(limit, offset))
        )

    def redeliver(self, webhook_id: str, delivery_id: str):
        return self._run(Call("POST", f"/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"))


class System(Resource):
    """The platform's health and status."""

    def health(self):
        return self._run(Call("GET", "/health"))

    def status(self):
        return self._run(Call("GET", "/system/status"))

    def metrics(self, *, hours: int | None = None):
        return self._run(Call("GET", "/system/metrics", params={"hours": hours}))

    def prometheus(self) -> Any:
        return self._run(
            Call("GET", "/system/metrics/prometheus", parse=lambda response: response.text)
        )


class Sessions(Resource):
    """Sessions (long-lived workspaces): thin calls of `/api/v1/sessions`; the bodies are the
    API's own (see its schema). New in the platform: the fields may still change."""

    def list(self, *, limit: int | None = None, offset: int | None = None):
        return self._run(Call("GET", "/sessions", params=_page(limit, offset)))

    def create(self, **body: Any):
        return self._run(Call("POST", "/sessions", json=body))

    def get(self, session_id: str):
        return self._run(Call("GET", f"/sessions/{session_id}"))

    def delete(self, session_id: str):
        return self._run(Call("DELETE", f"/sessions/{session_id}"))

    def run_task(self, session_id: str, **body: Any):
        return self._run(Call("POST", f"/sessions/{session_id}/tasks", json=body))

    def files(self, session_id: str, path: str = ""):
        return self._run(Call("GET", f"/sessions/{session_id}/files", params={"path": path}))

    def read_file(self, session_id: str, path: str):
        return self._run(
            Call("GET", f"/sessions/{session_id}/files/content", params={"path": path})
        )

    def write_file(self, session_id: str, path: str, content: str, **body: Any):
        return self._run(
            Call(
                "POST",
                f"/sessions/{session_id}/files/content",
                json={"path": path, "content": content, **body},
            )
        )

    def search_files(self, session_id: str, pattern: str, **body: Any):
        return self._run(
            Call("POST", f"/sessions/{session_id}/search/files", json={"pattern": pattern, **body})
        )

    def grep(self, session_id: str, pattern: str, **body: Any):
        return self._run(
            Call("POST", f"/sessions/{session_id}/search/grep", json={"pattern": pattern, **body})
        )

    def shell(self, session_id: str, command: str, **body: Any):
        return self._run(
            Call("POST", f"/sessions/{session_id}/shell", json={"command": command, **body})
        )

    def processes(self, session_id: str):
        return self._run(Call("GET", f"/sessions/{session_id}/processes"))

    def stop_process(self, session_id: str, pid: int):
        return self._run(Call("POST", f"/sessions/{session_id}/processes/{pid}/stop"))

    def process_logs(self, session_id: str, pid: int, **params: Any):
        return self._run(Call("GET", f"/sessions/{session_id}/processes/{pid}/logs", params=params))
