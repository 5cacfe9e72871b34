"""The `aimos` command: deploy agents from a folder, run and follow them from a terminal.

Exit codes (the same for every command):
    0  done (a run completed, a build is ready)
    1  a run or build failed (or was cancelled, or timed out)
    2  usage: bad arguments, an invalid manifest, a request the server refused as invalid
    3  authentication: not logged in, a wrong or revoked key, not allowed
    4  not found
    5  the server failed or could not be reached
    130 interrupted (Ctrl-C)

`--json` (on every command) prints one JSON document on stdout (JSON lines for the
commands that follow a stream), errors included: `{"error": {"status", "code", "detail",
"errors"}}` (a command line the parser itself refuses is reported as text, exit code 2).
"""

from __future__ import annotations

import functools
import json
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from aimos_client import __version__, config, devrun, scaffold
from aimos_client._render import EventPrinter, clean
from aimos_client.client import Client
from aimos_client.errors import (
    AimosError,
    ApiError,
    AuthenticationError,
    BuildFailedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from aimos_client.manifest import ManifestError
from aimos_client.models import STATUS_OF_TERMINAL_EVENT, TERMINAL_STATUSES
from aimos_client.packing import PackError

OK, FAILED, USAGE, AUTH, NOT_FOUND, UNAVAILABLE, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="aimos",
    help="Deploy, run and follow AIMOS agents. Exit codes: 0 ok, 1 run or build failed, "
    "2 usage, 3 authentication, 4 not found, 5 server or network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(help="Your API keys.", no_args_is_help=True, rich_markup_mode="markdown")
agents_app = typer.Typer(help="Your agents.", no_args_is_help=True, rich_markup_mode="markdown")
runs_app = typer.Typer(
    help="Runs (executions) of your agents.", no_args_is_help=True, rich_markup_mode="markdown"
)
dev_app = typer.Typer(
    help="Work on an agent on this machine.", no_args_is_help=True, rich_markup_mode="markdown"
)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")
app.add_typer(runs_app, name="runs")
app.add_typer(dev_app, name="dev")

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts (errors too) instead of tables.")
]
InputOption = Annotated[
    str | None, typer.Option("--input", "-i", help="The run's input, as JSON.", show_default=False)
]
InputFileOption = Annotated[
    Path | None,
    typer.Option("--input-file", "-f", help="A file holding the run's input as JSON ('-': stdin)."),
]


class State:
    url: str | None = None
    api_key: str | None = None


state = State()


class Failure(Exception):
    """Ends a command with a message and an exit code."""

    def __init__(self, code: int, message: str, *, error: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _code_of(exc: BaseException) -> int:
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return AUTH
    if isinstance(exc, NotFoundError):
        return NOT_FOUND
    if isinstance(exc, (ServerError, RateLimitedError, TransportError)):
        return UNAVAILABLE
    if isinstance(exc, ApiError):
        return USAGE if 400 <= exc.status < 500 else UNAVAILABLE
    if isinstance(exc, BuildFailedError):
        return FAILED
    if isinstance(exc, (ManifestError, PackError, scaffold.InitError)):
        return USAGE
    return UNAVAILABLE


def _error_body(exc: BaseException) -> dict:
    if isinstance(exc, ApiError):
        return {
            "status": exc.status,
            "code": exc.code,
            "detail": exc.detail,
            "errors": [{"field": e.field, "message": e.message} for e in exc.errors],
        }
    errors = getattr(exc, "errors", None) or []
    return {
        "status": None,
        "code": type(exc).__name__,
        "detail": str(exc),
        "errors": [{"field": e.field, "message": e.message} for e in errors],
    }


def command(typer_app: typer.Typer, name: str | None = None, **kwargs: Any):
    """A command whose errors become a message (JSON with --json) and an exit code."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args: Any, **options: Any) -> None:
            as_json = bool(options.get("as_json"))
            try:
                function(*args, **options)
            except typer.Exit:
                raise
            except Failure as failure:
                _fail(failure.code, failure.message, failure.error, as_json)
            except KeyboardInterrupt:
                err.print("interrupted")
                raise typer.Exit(INTERRUPTED) from None
            except (AimosError, OSError) as exc:
                code = _code_of(exc) if isinstance(exc, AimosError) else USAGE
                message = str(exc)
                if isinstance(exc, AuthenticationError) and function.__name__ != "login":
                    message += " — run `aimos login`, or set AIMOS_API_KEY"
                _fail(code, message, _error_body(exc), as_json)

        return typer_app.command(name, **kwargs)(wrapper)

    return decorate


def _fail(code: int, message: str, error: dict | None, as_json: bool) -> None:
    if as_json:
        body = error or {"status": None, "code": "error", "detail": message, "errors": []}
        _print_json({"error": body})
    else:
        err.print(Text(f"error: {clean(message)}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def _client(*, required: bool = True) -> Client:
    credentials = config.resolve(state.url, state.api_key)
    if required and not credentials.api_key:
        raise Failure(
            AUTH,
            f"not logged in to {credentials.url}: run `aimos login`, or set AIMOS_API_KEY",
            error={"status": None, "code": "not_logged_in", "detail": "no API key", "errors": []},
        )
    return Client(credentials.url, api_key=credentials.api_key)


def _read_input(text: str | None, file: Path | None) -> Any:
    if text is not None and file is not None:
        raise Failure(USAGE, "give --input or --input-file, not both")
    if file is not None:
        source = sys.stdin.read() if str(file) == "-" else file.read_text()
        where = "stdin" if str(file) == "-" else str(file)
    elif text is not None:
        source, where = text, "--input"
    else:
        return None
    try:
        return json.loads(source)
    except ValueError as exc:
        raise Failure(
            USAGE, f"{where} is not JSON ({exc}); a text input is quoted: --input '\"hello\"'"
        ) from None


def _table(columns: list[str], rows: list[list[Any]], ids: tuple[str, ...] = ("id",)) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in columns:
        if column in ids:
            table.add_column(column, no_wrap=True, min_width=36)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*["" if value is None else clean(str(value)) for value in row])
    return table


def _when(value: str | None) -> str:
    return (value or "").replace("T", " ")[:19]


# --- the root: options shared by every command -------------------------------------------


def _version(value: bool) -> None:
    if value:
        out.print(f"aimos {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    url: Annotated[
        str | None, typer.Option("--url", help="The server (else AIMOS_URL, else the login's).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="An API key (else AIMOS_API_KEY, else the login's)."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print it.")
    ] = False,
) -> None:
    state.url, state.api_key = url, api_key


# --- login, whoami, keys ---------------------------------------------------------------------


@command(app)
def login(
    url: Annotated[str | None, typer.Option("--url", help="The server's URL.")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="An API key to store (else asked).")
    ] = None,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Log in and mint a key instead.")
    ] = None,
    password: Annotated[
        str | None, typer.Option("--password", help="With --username (else asked).")
    ] = None,
    key_name: Annotated[
        str | None, typer.Option("--key-name", help="Name of the key minted for this machine.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Store the server's URL and an API key (given, or minted with your username and
    password) in ~/.config/aimos/config.json, readable by you only."""
    current = config.resolve(state.url)
    url = url or state.url or typer.prompt("AIMOS URL", default=current.url, err=True)
    url = url.rstrip("/")
    api_key = api_key or state.api_key
    if not api_key and not username:
        api_key = typer.prompt(
            "API key (empty: log in with a username and password)",
            default="",
            show_default=False,
            hide_input=True,
            err=True,
        ).strip()
        if not api_key:
            username = typer.prompt("Username or email", err=True)
    if not api_key:
        if password is None:
            password = typer.prompt("Password", hide_input=True, err=True)
        with Client(url) as client:
            client.auth.login(username, password)
            name = key_name or f"aimos CLI on {platform.node() or 'this machine'}"
            api_key = client.keys.create(name)["key"]
    with Client(url, api_key=api_key) as client:
        user = client.auth.me()
    path = config.save(url, api_key)
    if as_json:
        _print_json({"url": url, "username": user["username"], "config": str(path)})
    else:
        err.print(f"Logged in to {url} as {user['username']}; the key is in {path}.")


@command(app)
def logout(
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the stored key too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Forget the stored URL and key (and revoke the key on the server with --revoke)."""
    stored = config.load()
    revoked = False
    if revoke and stored.get("api_key"):
        # A key is `aimos_<prefix>_<secret>`; the API lists keys by their prefix.
        parts = str(stored["api_key"]).split("_")
        prefix = parts[1] if len(parts) == 3 else None
        with Client(stored.get("url"), api_key=stored["api_key"]) as client:
            for key in client.keys.list(limit=1000):
                if prefix is not None and key["key_prefix"] == prefix:
                    client.keys.revoke(key["id"])
                    revoked = True
    removed = config.remove()
    if as_json:
        _print_json({"removed": removed, "revoked": revoked})
    else:
        err.print("Logged out." if removed else "No stored login.")


@command(app)
def whoami(as_json: JsonOption = False) -> None:
    """Who the stored (or given) key belongs to."""
    with _client() as client:
        user = client.auth.me()
    if as_json:
        _print_json({**user, "url": client.base_url})
    else:
        admin = " (admin)" if user.get("is_admin") else ""
        out.print(f"{user['username']} <{user['email']}>{admin} on {client.base_url}")


@command(keys_app, "list")
def keys_list(as_json: JsonOption = False) -> None:
    """Your API keys (never the secret part)."""
    with _client() as client:
        keys = client.keys.list(limit=1000)
    if as_json:
        _print_json(keys)
        return
    rows = [
        [k["id"], k["name"], k["key_prefix"], _when(k["created_at"]), _when(k["last_used_at"])]
        for k in keys
    ]
    out.print(_table(["id", "name", "prefix", "created", "last used"], rows))


@command(keys_app, "create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for.")],
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="ISO 8601; never by default.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a key; the whole key is shown this once."""
    with _client() as client:
        key = client.keys.create(name, expires_at=expires_at)
    if as_json:
        _print_json(key)
    else:
        err.print(f"Key {key['name']} ({key['id']}); copy it now, it is not shown again:")
        out.print(key["key"])


@command(keys_app, "revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: refused from the next request on."""
    with _client() as client:
        client.keys.revoke(key_id)
    if as_json:
        _print_json({"id": key_id, "revoked": True})
    else:
        err.print(f"Revoked {key_id}.")


# --- init, dev run, deploy ----------------------------------------------------------------


@command(app)
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the agent.")] = Path("."),
    name: Annotated[str | None, typer.Option("--name", help="The agent's name.")] = None,
    template: Annotated[
        str,
        typer.Option("--template", "-t", help="sync (returns a value) or stream (yields text)."),
    ] = "sync",
    as_json: JsonOption = False,
) -> None:
    """Write a new agent (aimos.yaml, agent/main.py, requirements.txt) that runs as it is."""
    written = scaffold.init(folder, name=name, template=template)
    if as_json:
        _print_json({"folder": str(folder), "files": [str(path) for path in written]})
        return
    for path in written:
        err.print(f"  wrote {path}")
    where = str(folder)
    err.print(
        f"Next: aimos dev run {where} --input '{{}}'   then   aimos deploy {where}",
        soft_wrap=True,
    )


@command(dev_app, "run")
def dev_run(
    folder: Annotated[Path, typer.Argument(help="The agent's folder.")] = Path("."),
    input_text: InputOption = None,
    input_file: InputFileOption = None,
    state_text: Annotated[
        str | None, typer.Option("--state", help="ctx.state, as JSON (as if restored).")
    ] = None,
    python: Annotated[
        str | None, typer.Option("--python", help="The Python to run it with (default: this one).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds (default: the manifest's).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the agent's handler here, with the platform's runner and no server. Nothing is
    installed: the handler uses this Python's packages (or --python's)."""
    payload = _read_input(input_text, input_file)
    restored = _read_input(state_text, None) if state_text is not None else None
    printer = None if as_json else EventPrinter(err)
    result = devrun.run_local(
        folder, payload, state=restored, python=python, timeout=timeout, on_event=printer
    )
    if printer is not None:
        printer.finish()
    if as_json:
        _print_json(result.as_dict())
    raise typer.Exit(OK if result.ok else FAILED)


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=False,
    )


@command(app)
def deploy(
    folder: Annotated[Path, typer.Argument(help="The agent's folder.")] = Path("."),
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", help="Agent name or id (default: the manifest's name)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the build.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Check the manifest, pack the folder (honouring .aimosignore and .gitignore), upload
    it as a new version and follow its build."""
    progress = _progress(not as_json and err.is_terminal)
    task = None

    def packed(package) -> None:
        nonlocal task
        if not as_json:
            err.print(f"Packed {len(package.files)} files ({package.size:,} bytes).")
        if progress is not None:
            task = progress.add_task("uploading", total=package.size)
            progress.start()

    def sent(done: int, total: int) -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=done, total=total)

    def uploaded(found: dict, version: dict) -> None:
        if progress is not None:
            progress.stop()
        if not as_json:
            err.print(f"Uploaded {found['name']} {version['version']}; building…")

    line_open = False

    def log(text: str) -> None:
        nonlocal line_open
        if not as_json and text:
            sys.stderr.write(clean(text))
            sys.stderr.flush()
            line_open = not text.endswith("\n")

    with _client() as client:
        try:
            deployment = client.deploy(
                folder,
                agent=agent,
                progress=sent,
                on_log=log,
                wait=wait,
                on_packed=packed,
                on_uploaded=uploaded,
            )
        finally:
            if progress is not None:
                progress.stop()
            if line_open:
                sys.stderr.write("\n")
    version = deployment.version
    if as_json:
        _print_json({"agent": deployment.agent, "version": version, "created": deployment.created})
    elif version["status"] == "ready":
        out.print(f"{deployment.agent['name']} {version['version']} is ready ({version['id']}).")
    elif version["status"] == "failed":
        err.print(Text(f"The build of {version['version']} failed.", style="bold red"))
    else:
        out.print(f"{deployment.agent['name']} {version['version']} is {version['status']}.")
    raise typer.Exit(FAILED if version["status"] == "failed" else OK)


# --- run and runs ---------------------------------------------------------------------------


def _exit_for(status: str) -> int:
    return OK if status == "completed" else FAILED


def _follow(client: Client, run_id: str, printer: EventPrinter, after: int = 0) -> str:
    """Print the run's events until its end; its final status. Ctrl-C asks whether to cancel."""
    try:
        for event in client.executions.stream(run_id, after=after):
            printer(event)
        printer.finish()
    except KeyboardInterrupt:
        printer.finish()
        cancel = False
        if sys.stdin.isatty():
            try:
                cancel = typer.confirm(f"Cancel run {run_id}?", default=False, err=True)
            except (KeyboardInterrupt, typer.Abort, EOFError):
                cancel = False
        if cancel:
            run = client.executions.cancel(run_id)
            err.print(f"Run {run_id} is {run['status']}.")
        else:
            err.print(f"The run goes on: aimos runs events {run_id} --follow")
        raise typer.Exit(INTERRUPTED) from None
    if printer.terminal is not None:
        return STATUS_OF_TERMINAL_EVENT[printer.terminal.type]
    return client.executions.get(run_id)["status"]


@command(app)
def run(
    agent: Annotated[str, typer.Argument(help="The agent's name or id.")],
    input_text: InputOption = None,
    input_file: InputFileOption = None,
    version: Annotated[
        str | None, typer.Option("--version", "-v", help="A version (3 or v3); default: current.")
    ] = None,
    timeout: Annotated[int | None, typer.Option("--timeout", help="Seconds.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--detach", help="Print the run as it happens (default), or only start it."
        ),
    ] = True,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the end and print only the output.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run an agent: prints the text it streams, its tool calls and logs, then its output.
    Ctrl-C asks whether to cancel the run. Exit code 1 when the run does not complete."""
    payload = _read_input(input_text, input_file)
    with _client() as client:
        started = client.executions.create(agent, payload, version=version, timeout_seconds=timeout)
        run_id = started["id"]
        if not follow and not wait:
            if as_json:
                _print_json(started)
            else:
                out.print(f"Started run {run_id} ({started['status']}).")
            return
        if as_json or wait:
            try:
                final = client.executions.wait(run_id)
            except KeyboardInterrupt:
                err.print(f"The run goes on: aimos runs get {run_id}")
                raise typer.Exit(INTERRUPTED) from None
            if as_json:
                _print_json(final)
            elif final["status"] == "completed":
                output = final["output"]
                out.print(output if isinstance(output, str) else json.dumps(output, indent=2))
            else:
                err.print(Text(f"✗ {final['status']}: {final['error_message']}", style="bold red"))
            raise typer.Exit(_exit_for(final["status"]))
        status = _follow(client, run_id, EventPrinter(err))
    raise typer.Exit(_exit_for(status))


@command(runs_app, "list")
def runs_list(
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="An agent's name or id.")
    ] = None,
    status: Annotated[str | None, typer.Option("--status", help="e.g. running, failed.")] = None,
    active: Annotated[
        bool, typer.Option("--active", help="Pending, running or paused only.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Your runs, newest first."""
    with _client() as client:
        agent_id = client.agents.get(agent)["id"] if agent else None
        runs = client.executions.list(agent_id=agent_id, status=status, limit=limit, active=active)
    if as_json:
        _print_json(runs)
        return
    rows = [
        [
            r["id"],
            r["agent_name"],
            r["version"],
            r["status"],
            _when(r["created_at"]),
            r["duration_ms"],
        ]
        for r in runs
    ]
    out.print(_table(["id", "agent", "version", "status", "created", "ms"], rows))


def _show_run(run: dict) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in (
        "id",
        "agent_name",
        "version",
        "status",
        "error_type",
        "error_message",
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "events",
    ):
        value = run.get(name)
        if value not in (None, ""):
            table.add_row(name, clean(str(value)))
    table.add_row("input", clean(json.dumps(run.get("input"), ensure_ascii=False)))
    if run.get("status") == "completed":
        table.add_row("output", clean(json.dumps(run.get("output"), ensure_ascii=False)))
    out.print(table)


@command(runs_app, "get")
def runs_get(run_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """One run: its state, input and output."""
    with _client() as client:
        found = client.executions.get(run_id)
    if as_json:
        _print_json(found)
    else:
        _show_run(found)


def _control(action: str, run_id: str, as_json: bool) -> None:
    with _client() as client:
        changed = getattr(client.executions, action)(run_id)
    if as_json:
        _print_json(changed)
    else:
        out.print(f"Run {run_id} is {changed['status']}.")


@command(runs_app, "cancel")
def runs_cancel(run_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """Cancel a run (answers once every process of it is gone)."""
    _control("cancel", run_id, as_json)


@command(runs_app, "pause")
def runs_pause(run_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """Freeze a running run."""
    _control("pause", run_id, as_json)


@command(runs_app, "resume")
def runs_resume(run_id: Annotated[str, typer.Argument()], as_json: JsonOption = False) -> None:
    """Let a paused run go on."""
    _control("resume", run_id, as_json)


def _log_line(entry: dict) -> Text:
    level = str(entry.get("level") or "info").lower()
    stamp = _when(entry.get("timestamp"))[11:]
    style = {"error": "red", "warning": "yellow", "debug": "dim"}.get(level, "")
    text = f"{stamp} {level.upper():7} {entry.get('source', ''):8} {entry.get('message', '')}"
    return Text(clean(text), style=style)


@command(runs_app, "logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument()],
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Keep printing until the run ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The run's log: what it printed (stdout, stderr), its ctx.log lines, the platform's."""
    with _client() as client:
        if not follow:
            entries = client.executions.logs(run_id, limit=1000)
            if as_json:
                _print_json(entries)
            else:
                for entry in entries:
                    out.print(_log_line(entry), soft_wrap=True)
            return
        for event in client.executions.stream(run_id):
            if event.type != "log":
                continue
            entry = {
                "timestamp": event.timestamp,
                "level": str(event.data.get("level") or "info").upper(),
                "message": event.data.get("message", ""),
                "source": event.data.get("source", "agent"),
                "metadata": {"seq": event.seq},
            }
            if as_json:
                _json_line(entry)
            else:
                out.print(_log_line(entry), soft_wrap=True)


@command(runs_app, "events")
def runs_events(
    run_id: Annotated[str, typer.Argument()],
    after: Annotated[int, typer.Option("--after", help="Only events after this seq.")] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Follow until the run ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The run's events (as a JSON array with --json; JSON lines with --follow --json)."""
    with _client() as client:
        if not follow:
            events = client.executions.events(run_id, after=after, limit=10000)
            if as_json:
                _print_json([event.as_dict() for event in events])
                return
            printer = EventPrinter(err)
            for event in events:
                printer(event)
            printer.finish()
            return
        if as_json:
            for event in client.executions.stream(run_id, after=after):
                _json_line(event.as_dict())
            return
        status = _follow(client, run_id, EventPrinter(err), after=after)
    raise typer.Exit(_exit_for(status) if status in TERMINAL_STATUSES else OK)


# --- agents, status ---------------------------------------------------------------------------


@command(agents_app, "list")
def agents_list(
    status: Annotated[
        str | None, typer.Option("--status", help="draft, building, ready, failed, archived.")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="In name, description, role.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    as_json: JsonOption = False,
) -> None:
    """Your agents."""
    with _client() as client:
        agents = client.agents.list(status=status, search=search, tag=tag, limit=1000)
    if as_json:
        _print_json(agents)
        return
    rows = [
        [
            a["id"],
            a["name"],
            a["status"],
            a["current_version"],
            a["total_executions"],
            f"{a['success_rate']:.0f}%",
        ]
        for a in agents
    ]
    out.print(_table(["id", "name", "status", "version", "runs", "ok"], rows))


@command(agents_app, "get")
def agents_get(
    agent: Annotated[str, typer.Argument(help="Name or id.")], as_json: JsonOption = False
) -> None:
    """One agent."""
    with _client() as client:
        found = client.agents.get(agent)
    if as_json:
        _print_json(found)
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in (
        "id",
        "name",
        "status",
        "current_version",
        "description",
        "role",
        "tags",
        "total_executions",
        "success_rate",
        "last_execution",
        "created_at",
    ):
        value = found.get(name)
        if value not in (None, "", []):
            table.add_row(name, clean(", ".join(value) if isinstance(value, list) else str(value)))
    out.print(table)


@command(agents_app, "versions")
def agents_versions(
    agent: Annotated[str, typer.Argument(help="Name or id.")],
    show_log: Annotated[
        bool, typer.Option("--log", help="Print the newest version's build log.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """An agent's versions and their builds."""
    with _client() as client:
        versions = client.versions.list(agent, limit=1000)
    if as_json:
        _print_json(versions)
        return
    rows = [
        [
            v["id"],
            v["version"],
            v["status"],
            v["entrypoint"],
            f"{v['artifact_size']:,}",
            _when(v["created_at"]),
        ]
        for v in versions
    ]
    out.print(_table(["id", "version", "status", "entrypoint", "bytes", "created"], rows))
    if show_log and versions:
        out.print(clean(versions[-1]["build_log"]), markup=False, highlight=False)


@command(agents_app, "archive")
def agents_archive(
    agent: Annotated[str, typer.Argument(help="Name or id.")], as_json: JsonOption = False
) -> None:
    """Archive an agent: it no longer runs; its versions and runs are kept."""
    with _client() as client:
        archived = client.agents.archive(agent)
    if as_json:
        _print_json(archived)
    else:
        out.print(f"{archived['name']} is {archived['status']}.")


@command(app)
def status(as_json: JsonOption = False) -> None:
    """The server's health: database, Redis, workers, queues, the sandbox."""
    with _client(required=False) as client:
        found = client.system.status()
    if as_json:
        _print_json(found)
        return
    sandbox = found.get("sandbox") or {}
    sandbox_text = (
        f"{sandbox.get('backend')} ({'available' if sandbox.get('available') else 'unavailable'})"
    )
    if not sandbox.get("available") and sandbox.get("reason"):
        sandbox_text += f": {sandbox['reason']}"
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("server", client.base_url)
    table.add_row("status", str(found.get("status")))
    table.add_row("version", f"{found.get('version')} ({found.get('environment')})")
    checks = found.get("checks") or {}
    table.add_row("checks", ", ".join(f"{name} {value}" for name, value in checks.items()))
    table.add_row("workers", str((found.get("workers") or {}).get("count")))
    table.add_row("queues", ", ".join(f"{k} {v}" for k, v in (found.get("queues") or {}).items()))
    table.add_row("sandbox", clean(sandbox_text))
    table.add_row("agents", f"{found.get('active_agents')} active of {found.get('total_agents')}")
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
