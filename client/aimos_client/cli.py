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
"errors"}}` — `code` is the server's, or one of CLIENT_ERROR_CODES for what went wrong on
this side (a command line the parser itself refuses is reported as text, exit code 2).

What an agent or a user wrote is never read as Rich markup, and data is never wrapped: plain
lines are written whole, and tables only fit themselves to a terminal (in a pipe or a file
each row is one line). A closed stdout (`aimos … | head -1`) ends the command quietly, 0.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from aimos_client import __version__, config, devrun, scaffold
from aimos_client._render import (
    EventPrinter,
    clean,
    console,
    for_stream,
    is_tty,
    local_time,
    output_text,
    print_table,
)
from aimos_client.client import Client, check_base_url
from aimos_client.errors import (
    AimosError,
    ApiError,
    AuthenticationError,
    BuildFailedError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    StreamError,
    TransportError,
    WaitTimeoutError,
)
from aimos_client.manifest import ManifestError, load_manifest
from aimos_client.models import STATUS_OF_TERMINAL_EVENT, TERMINAL_STATUSES, Event
from aimos_client.packing import PackError

OK, FAILED, USAGE, AUTH, NOT_FOUND, UNAVAILABLE, INTERRUPTED = 0, 1, 2, 3, 4, 5, 130

# The `code` of an error found on this side (the server's own codes pass through as they are).
CLIENT_ERROR_CODES = {
    "usage_error": "bad arguments (e.g. --detach with --wait, no password and no terminal)",
    "invalid_json": "--input, --input-file or --state is not JSON",
    "invalid_url": "the server's URL is not an http:// or https:// URL",
    "invalid_manifest": "aimos.yaml is missing or invalid",
    "invalid_package": "the folder cannot be packed (e.g. a link leading out of it)",
    "init_refused": "`init`: the folder holds an agent already, or no valid name",
    "file_error": "a local file could not be read or written",
    "not_logged_in": "no API key: not logged in",
    "unreachable": "the server could not be reached, or did not answer in time",
    "stream_lost": "a run's event stream dropped too many times in a row",
    "wait_timeout": "something did not end in the time given",
    "interrupted": "Ctrl-C",
}

out = console()
err = console(stderr=True)


class _PlainHelp:
    """Help that shows `--wait` (not `--wait <bool>`) and `aimos run AGENT` (not `{agent}`)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperArgument):
                if param.metavar is None:
                    param.metavar = param.name.upper()
            elif getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # a flag takes no value: no type to show
        return params

    def format_help(self, ctx, formatter) -> None:
        try:
            super().format_help(ctx, formatter)
        except BrokenPipeError:  # `aimos run --help | head -3`
            _quiet_exit()
        except SystemExit as stop:
            if stop.code != 1:
                raise
            _quiet_exit()  # how Rich's console (typer's help) answers a closed stdout

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class AimosCommand(_PlainHelp, TyperCommand):
    pass


class AimosGroup(_PlainHelp, TyperGroup):
    def collect_usage_pieces(self, ctx) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


def _typer(**options: Any) -> typer.Typer:
    return typer.Typer(
        cls=AimosGroup,
        no_args_is_help=True,
        rich_markup_mode="markdown",
        context_settings={"help_option_names": ["-h", "--help"]},
        **options,
    )


app = _typer(
    name="aimos",
    help="Deploy, run and follow AIMOS agents. Exit codes: 0 ok, 1 run or build failed, "
    "2 usage, 3 authentication, 4 not found, 5 server or network.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = _typer(help="Your API keys.")
agents_app = _typer(help="Your agents.")
runs_app = _typer(help="Runs (executions) of your agents.")
dev_app = _typer(help="Work on an agent on this machine.")
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
    """Ends a command with a message and an exit code (`name`: the error's code in JSON)."""

    def __init__(
        self, code: int, message: str, *, name: str = "usage_error", error: dict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error = error or {"status": None, "code": name, "detail": message, "errors": []}


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def _write_out(text: str) -> None:
    """Data on stdout as it is (a terminal gets it without control sequences), one line."""
    text = for_stream(text, sys.stdout)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _say(message: str, style: str = "") -> None:
    """A note for the human on stderr, never wrapped, never read as markup."""
    err.print(Text(clean(message), style=style))


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


def _client_code(exc: BaseException) -> str:
    """The lowercase code (as the server's) of an error found on this side."""
    if isinstance(exc, ManifestError):
        return "invalid_manifest"
    if isinstance(exc, PackError):
        return "invalid_package"
    if isinstance(exc, scaffold.InitError):
        return "init_refused"
    if isinstance(exc, StreamError):
        return "stream_lost"
    if isinstance(exc, TransportError):
        return "unreachable"
    if isinstance(exc, BuildFailedError):
        return "build_failed"
    if isinstance(exc, WaitTimeoutError):
        return "wait_timeout"
    if isinstance(exc, OSError):
        return "file_error"
    return "error"


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
        "code": _client_code(exc),
        "detail": str(exc),
        "errors": [{"field": e.field, "message": e.message} for e in errors],
    }


def _quiet_exit() -> None:
    """The reader of stdout went away (`aimos … | head -1`): end at once, quietly, 0.
    Both streams are pointed at /dev/null so that nothing left to flush fails again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    raise typer.Exit(OK)


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
            except BrokenPipeError:
                _quiet_exit()
            except Failure as failure:
                _fail(failure.code, failure.message, failure.error, as_json)
            except KeyboardInterrupt:
                _fail(INTERRUPTED, "interrupted", None, as_json, name="interrupted")
            except (AimosError, OSError) as exc:
                code = _code_of(exc) if isinstance(exc, AimosError) else USAGE
                message = str(exc)
                if isinstance(exc, AuthenticationError) and function.__name__ != "login":
                    message += " — run `aimos login`, or set AIMOS_API_KEY"
                _fail(code, message, _error_body(exc), as_json)

        return typer_app.command(name, cls=AimosCommand, **kwargs)(wrapper)

    return decorate


def _fail(
    code: int, message: str, error: dict | None, as_json: bool, *, name: str = "error"
) -> None:
    try:
        if as_json:
            body = error or {"status": None, "code": name, "detail": message, "errors": []}
            _print_json({"error": body})
        else:
            _say(f"error: {message}", "bold red")
    except BrokenPipeError:
        _quiet_exit()
    raise typer.Exit(code)


def _valid_url(url: str, where: str) -> str:
    try:
        return check_base_url(url)
    except ValueError:
        example = f"http://{url}" if "://" not in url else "http://127.0.0.1:8000"
        raise Failure(
            USAGE,
            f"{where}: {url!r} is not a server URL; give it with http:// or https:// "
            f"(e.g. {example})",
            name="invalid_url",
        ) from None


def _url_source(source: str) -> str:
    return {
        "option": "--url",
        "environment": "AIMOS_URL",
        "default": "the default URL",
    }.get(source, f"the stored login ({source})")


def _client(*, required: bool = True) -> Client:
    credentials = config.resolve(state.url, state.api_key)
    url = _valid_url(credentials.url, _url_source(credentials.url_source))
    if required and not credentials.api_key:
        raise Failure(
            AUTH,
            f"not logged in to {url}: run `aimos login`, or set AIMOS_API_KEY",
            name="not_logged_in",
        )
    return Client(url, api_key=credentials.api_key)


def _read_input(text: str | None, file: Path | None, *, option: str = "--input") -> Any:
    if text is not None and file is not None:
        raise Failure(USAGE, f"give {option} or --input-file, not both")
    if file is not None:
        source = sys.stdin.read() if str(file) == "-" else file.read_text()
        where = "stdin" if str(file) == "-" else str(file)
    elif text is not None:
        source, where = text, option
    else:
        return None
    try:
        return json.loads(source)
    except ValueError as exc:
        raise Failure(
            USAGE,
            f"{where} is not JSON ({exc}); a text is quoted: {option} '\"hello\"'",
            name="invalid_json",
        ) from None


# Columns a terminal table never folds: short, and useless when cut in two.
UNFOLDED = frozenset(
    {"id", "status", "created", "last used", "version", "prefix", "ms", "runs", "ok", "bytes"}
)


def _table(columns: list[str], rows: list[list[Any]]) -> Table:
    """Rows of data, each cell a Text (never markup). In a terminal too narrow for them,
    the free-text columns (names, entrypoints) fold; ids, times and states stay whole."""
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in columns:
        if column in UNFOLDED:
            table.add_column(column, no_wrap=True, min_width=36 if column == "id" else None)
        else:
            table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[Text("" if value is None else clean(str(value))) for value in row])
    return table


def _fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    """`name  value` lines (values as Text, never markup)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(name, Text(clean(str(value))))
    return grid


_when = local_time


# --- the root: options shared by every command -------------------------------------------


def _version(value: bool) -> None:
    if value:
        _write_out(f"aimos {__version__}")
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


def _ask(prompt: str, option: str, *, default: str | None = None, secret: bool = False) -> str:
    """An answer typed on the terminal (or read from stdin); refused when there is none."""
    try:
        return typer.prompt(
            prompt,
            default=default,
            show_default=default not in (None, ""),
            # A hidden prompt needs a terminal; stdin from a pipe is read as it comes.
            hide_input=secret and is_tty(sys.stdin),
            err=True,
        )
    except (typer.Abort, EOFError):
        raise Failure(USAGE, f"{prompt}: no answer; give it with {option}") from None


def _user_of_key(url: str, api_key: str) -> str | None:
    """The id of the user `api_key` authenticates at `url`, or None when it is refused."""
    try:
        with Client(url, api_key=api_key) as client:
            return client.auth.me()["id"]
    except (AuthenticationError, PermissionDeniedError):
        return None


def _revoke_quietly(url: str, api_key: str, key_id: str) -> bool:
    """Revoke a key with itself; False when that fails (revoked already, say)."""
    try:
        with Client(url, api_key=api_key) as client:
            client.keys.revoke(key_id)
    except AimosError:
        return False
    return True


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
        str | None,
        typer.Option("--password", help="With --username (asked on a terminal, else needed)."),
    ] = None,
    key_name: Annotated[
        str | None,
        typer.Option("--key-name", help="Mint a new key of this name (even if one is stored)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Store the server's URL and an API key (given, or minted with your username and
    password) in ~/.config/aimos/config.json, readable by you only.

    With a username, the stored key is used again when it still works for that server and
    user (`--key-name` mints a new one anyway); a key an earlier login minted is revoked
    when another key replaces it."""
    current = config.resolve(state.url)
    if url is None and state.url is None:
        url = _ask("AIMOS URL", "--url", default=current.url)
    url = _valid_url(url or state.url or "", "--url")
    api_key = api_key or state.api_key
    if not api_key and not username:
        api_key = _ask(
            "API key (empty: log in with a username and password)",
            "--api-key",
            default="",
            secret=True,
        ).strip()
        if not api_key:
            username = _ask("Username or email", "--username")
    stored = config.load()
    same_server = str(stored.get("url") or "").rstrip("/") == url
    previous = str(stored.get("api_key") or "") if same_server else ""
    how, key_id = "given", None
    if not api_key:
        if password is None:
            if not is_tty(sys.stdin):
                raise Failure(
                    USAGE,
                    "logging in with --username needs the password: give --password "
                    "(there is no terminal to ask it on)",
                )
            password = _ask("Password", "--password", secret=True)
        with Client(url) as client:
            client.auth.login(username, password)
            user_id = client.auth.me()["id"]
            if previous and key_name is None and _user_of_key(url, previous) == user_id:
                api_key, how = previous, "reused"
            else:
                name = key_name or f"aimos CLI on {platform.node() or 'this machine'}"
                minted = client.keys.create(name)
                api_key, how, key_id = minted["key"], "minted", minted["id"]
    with Client(url, api_key=api_key) as client:
        user = client.auth.me()
    if key_id is None and api_key == previous and stored.get("key_id"):
        key_id = str(stored["key_id"])  # still the key a login minted
    path = config.save(url, api_key, **({"key_id": key_id} if key_id else {}))
    revoked_previous = False
    if previous and previous != api_key and stored.get("key_id"):
        revoked_previous = _revoke_quietly(url, previous, str(stored["key_id"]))
    if as_json:
        _print_json(
            {
                "url": url,
                "username": user["username"],
                "config": str(path),
                "key": how,
                "revoked_previous": revoked_previous,
            }
        )
        return
    what = {
        "reused": "the stored key still works and was kept",
        "minted": "a new key was minted",
        "given": "the key given is stored",
    }[how]
    if revoked_previous:
        what += "; the key the previous login minted is revoked"
    _say(f"Logged in to {url} as {user['username']} ({what}); the key is in {path}.")


@command(app)
def logout(
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the stored key too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Forget the stored URL and key (--revoke: revoke the key on the server too).

    When the key cannot be revoked (the server is down, say), the login is kept."""
    stored = config.load()
    revoked = False
    note = ""
    if revoke and stored.get("api_key"):
        # A key is `aimos_<prefix>_<secret>`; the API lists keys by their prefix.
        parts = str(stored["api_key"]).split("_")
        prefix = parts[1] if len(parts) == 3 else None
        url = _valid_url(str(stored.get("url") or config.DEFAULT_URL), "the stored login")
        try:
            with Client(url, api_key=stored["api_key"]) as client:
                for key in client.keys.list(limit=1000):
                    if prefix is not None and key["key_prefix"] == prefix:
                        client.keys.revoke(key["id"])
                        revoked = True
        except AuthenticationError:
            note = "the server refuses the key already"
        except AimosError as exc:
            raise Failure(
                _code_of(exc),
                f"could not revoke the key ({exc}); the login was kept. `aimos logout` "
                "without --revoke forgets it, but the key then stays valid on the server.",
                error={**_error_body(exc), "detail": f"could not revoke the key: {exc}"},
            ) from None
    removed = config.remove()
    if as_json:
        _print_json({"removed": removed, "revoked": revoked})
    else:
        _say(("Logged out." if removed else "No stored login.") + (f" ({note})" if note else ""))


@command(app)
def whoami(as_json: JsonOption = False) -> None:
    """Who the stored (or given) key belongs to."""
    with _client() as client:
        user = client.auth.me()
    if as_json:
        _print_json({**user, "url": client.base_url})
    else:
        admin = " (admin)" if user.get("is_admin") else ""
        _write_out(f"{user['username']} <{user['email']}>{admin} on {client.base_url}")


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
    print_table(out, _table(["id", "name", "prefix", "created", "last used"], rows))


@command(keys_app, "create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for.")],
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="ISO 8601; never by default.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a key; the whole key is shown this once, alone on its line of stdout."""
    with _client() as client:
        key = client.keys.create(name, expires_at=expires_at)
    if as_json:
        _print_json(key)
        return
    if is_tty(sys.stdout):
        _say(f"Key {key['name']} ({key['id']}); copy it now, it is not shown again:")
    sys.stdout.write(key["key"] + "\n")
    sys.stdout.flush()


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
        _say(f"Revoked {key_id}.")


# --- init, dev run, deploy ----------------------------------------------------------------


@command(app)
def init(
    folder: Annotated[Path, typer.Argument(help="Where to write the agent.")] = Path("."),
    name: Annotated[
        str | None, typer.Option("--name", help="The agent's name (default: the folder's).")
    ] = None,
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
        _say(f"  wrote {path}")
    where = shlex.quote(str(folder))
    _say(f"Next: aimos dev run {where} --input '{{}}'   then   aimos deploy {where}")


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
    restored = _read_input(state_text, None, option="--state") if state_text is not None else None
    printer = None if as_json else EventPrinter(err)
    result = devrun.run_local(
        folder, payload, state=restored, python=python, timeout=timeout, on_event=printer
    )
    if printer is not None:
        printer.finish()
    if as_json:
        _print_json(result.as_dict())
    elif result.hint:
        _say(f"hint: {result.hint}", "yellow")
    raise typer.Exit(OK if result.ok else FAILED)


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        # Its own column: the consoles read no markup, not even Rich's default column's.
        TextColumn("{task.description}", style="progress.description", markup=False),
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
            _say(f"Packed {len(package.files)} files ({package.size:,} bytes).")
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
            _say(
                f"Uploaded {found['name']} {version['version']}; "
                + ("building…" if wait else "it builds now.")
            )

    def log(line: str) -> None:
        if not as_json:
            sys.stderr.write(clean(line) + "\n")
            sys.stderr.flush()

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
        except ConflictError as exc:
            if "archived" not in exc.detail.lower():
                raise
            name = agent or load_manifest(folder)["name"]
            raise Failure(
                USAGE,
                f"{exc.detail}: `aimos agents restore {shlex.quote(name)}` brings it back, "
                "then deploy again",
                error={**_error_body(exc), "hint": f"aimos agents restore {name}"},
            ) from None
        finally:
            if progress is not None:
                progress.stop()
    version = deployment.version
    name = deployment.agent["name"]
    if as_json:
        _print_json({"agent": deployment.agent, "version": version, "created": deployment.created})
    elif version["status"] == "ready":
        _write_out(f"{name} {version['version']} is ready ({version['id']}).")
    elif version["status"] == "failed":
        _say(f"The build of {version['version']} failed.", "bold red")
    else:
        _write_out(f"{name} {version['version']} is {version['status']}.")
        _say(f"Follow its build: aimos agents versions {shlex.quote(name)} --follow")
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
            _say(f"Run {run_id} is {run['status']}.")
        else:
            _say(f"The run goes on: aimos runs events {run_id} --follow")
        raise typer.Exit(INTERRUPTED) from None
    if printer.terminal is not None:
        return STATUS_OF_TERMINAL_EVENT[printer.terminal.type]
    return client.executions.get(run_id)["status"]


def _stamped(client: Client, run_id: str, events: Iterable[Event]) -> Iterator[Event]:
    """The events with their timestamps: an event stream's frames carry none, the stored
    events do. They are read in batches from the first event that lacks one, so a run
    streaming fast costs a request now and then, not one an event."""
    known: dict[int, str | None] = {}
    for event in events:
        if event.timestamp is None:
            if event.seq not in known:
                stored = client.executions.events(run_id, after=event.seq - 1, limit=1000)
                known = {item.seq: item.timestamp for item in stored}
            event = replace(event, timestamp=known.pop(event.seq, None))
        yield event


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
        bool | None,
        typer.Option(
            "--follow/--detach",
            help="Print the run as it happens (default), or only start it and print its id.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the end and print only the output.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Run an agent: prints the text it streams, its tool calls and logs, then its output.

    Ctrl-C asks whether to cancel the run. Exit code 1 when the run does not complete."""
    if wait and follow is not None:
        raise Failure(USAGE, f"--wait and --{'follow' if follow else 'detach'} exclude each other")
    payload = _read_input(input_text, input_file)
    with _client() as client:
        started = client.executions.create(agent, payload, version=version, timeout_seconds=timeout)
        run_id = started["id"]
        if follow is False:
            if as_json:
                _print_json(started)
            else:
                _write_out(run_id)
                _say(
                    f"Started run {run_id} ({started['status']}); follow it: "
                    f"aimos runs events {run_id} --follow"
                )
            return
        if as_json or wait:
            try:
                final = client.executions.wait(run_id)
            except KeyboardInterrupt:
                raise Failure(
                    INTERRUPTED,
                    f"interrupted; the run goes on: aimos runs get {run_id}",
                    name="interrupted",
                ) from None
            if as_json:
                _print_json(final)
            elif final["status"] == "completed":
                _write_out(output_text(final["output"]))
            else:
                _say(f"✗ {final['status']}: {final['error_message']}", "bold red")
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
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="How many (1 to 1000).")
    ] = 20,
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
    print_table(out, _table(["id", "agent", "version", "status", "created", "ms"], rows))


RUN_TIMES = ("created_at", "started_at", "finished_at")


def _show_run(run: dict) -> None:
    pairs = []
    for name in (
        "id",
        "agent_name",
        "version",
        "status",
        "error_type",
        "error_message",
        *RUN_TIMES,
        "duration_ms",
        "events",
    ):
        value = run.get(name)
        if value not in (None, ""):
            pairs.append((name, _when(value) if name in RUN_TIMES else value))
    pairs.append(("input", json.dumps(run.get("input"), ensure_ascii=False)))
    if run.get("status") == "completed":
        pairs.append(("output", json.dumps(run.get("output"), ensure_ascii=False)))
    print_table(out, _fields(pairs))


@command(runs_app, "get")
def runs_get(
    run_id: Annotated[str, typer.Argument(help="The run's id.")], as_json: JsonOption = False
) -> None:
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
        _write_out(f"Run {run_id} is {changed['status']}.")


RunId = Annotated[str, typer.Argument(help="The run's id.")]


@command(runs_app, "cancel")
def runs_cancel(run_id: RunId, as_json: JsonOption = False) -> None:
    """Cancel a run (answers once every process of it is gone)."""
    _control("cancel", run_id, as_json)


@command(runs_app, "pause")
def runs_pause(run_id: RunId, as_json: JsonOption = False) -> None:
    """Freeze a running run."""
    _control("pause", run_id, as_json)


@command(runs_app, "resume")
def runs_resume(run_id: RunId, as_json: JsonOption = False) -> None:
    """Let a paused run go on."""
    _control("resume", run_id, as_json)


def _log_line(entry: dict) -> Text:
    level = str(entry.get("level") or "info").lower()
    stamp = _when(entry.get("timestamp"), date=False)
    style = {"error": "red", "warning": "yellow", "debug": "dim"}.get(level, "")
    text = f"{stamp} {level.upper():7} {entry.get('source', ''):8} {entry.get('message', '')}"
    return Text(clean(text), style=style)


def _end_entry(event: Event) -> dict | None:
    """The log entry that says why a run ended, from its terminal event (None when it
    completed: its log says enough)."""
    status = STATUS_OF_TERMINAL_EVENT.get(event.type)
    if status is None or status == "completed":
        return None
    data = event.data
    if status == "failed":
        reason = f"({data.get('error_type') or 'error'}) {data.get('error') or ''}".rstrip()
    else:
        reason = str(data.get("reason") or "")
    return {
        "timestamp": event.timestamp,
        "level": "ERROR",
        "message": f"run {status.replace('_', ' ')}" + (f": {reason}" if reason else ""),
        "source": "platform",
        "metadata": {"seq": event.seq, "event": event.type},
    }


def _terminal_event(client: Client, run_id: str) -> Event | None:
    found = client.executions.get(run_id)
    if found["status"] not in TERMINAL_STATUSES:
        return None
    last = client.executions.events(run_id, after=max(0, int(found.get("events") or 1) - 1))
    ends = [event for event in last if event.is_terminal]
    if ends:
        return ends[-1]
    # Its log was trimmed: the run's own record says the same.
    kind = {s: t for t, s in STATUS_OF_TERMINAL_EVENT.items()}[found["status"]]
    data = {
        "error": found.get("error_message"),
        "error_type": found.get("error_type"),
        "reason": found.get("error_message"),
    }
    return Event(
        seq=int(found.get("events") or 0),
        type=kind,
        data=data,
        execution_id=run_id,
        timestamp=found.get("finished_at"),
    )


@command(runs_app, "logs")
def runs_logs(
    run_id: RunId,
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Keep printing until the run ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The run's log: what it printed (stdout, stderr), its ctx.log lines, the platform's.

    A run that did not complete ends with the platform's line saying why (cancelled, timed
    out, failed)."""

    def show(entry: dict) -> None:
        if as_json and follow:
            _json_line(entry)
        elif not as_json:
            out.print(_log_line(entry))

    with _client() as client:
        if not follow:
            entries = list(client.executions.logs(run_id, limit=1000))
            terminal = _terminal_event(client, run_id)
            end = _end_entry(terminal) if terminal is not None else None
            if end is not None:
                entries.append(end)
            if as_json:
                _print_json(entries)
            else:
                for entry in entries:
                    show(entry)
            return
        for event in _stamped(client, run_id, client.executions.stream(run_id)):
            if event.is_terminal:
                end = _end_entry(event)
                if end is not None:
                    show(end)
                continue
            if event.type != "log":
                continue
            show(
                {
                    "timestamp": event.timestamp,
                    "level": str(event.data.get("level") or "info").upper(),
                    "message": event.data.get("message", ""),
                    "source": event.data.get("source", "agent"),
                    "metadata": {"seq": event.seq},
                }
            )


@command(runs_app, "events")
def runs_events(
    run_id: RunId,
    after: Annotated[int, typer.Option("--after", help="Only events after this seq.")] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-F", help="Follow until the run ends.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The run's events, rendered (or JSON).

    `--json`: a JSON array; `--follow --json`: one JSON object a line, each with its
    timestamp."""
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
            for event in _stamped(client, run_id, client.executions.stream(run_id, after=after)):
                _json_line(event.as_dict())
            return
        status = _follow(client, run_id, EventPrinter(err), after=after)
    raise typer.Exit(_exit_for(status) if status in TERMINAL_STATUSES else OK)


# --- agents, status ---------------------------------------------------------------------------

AgentRef = Annotated[str, typer.Argument(help="The agent's name or id.")]


@command(agents_app, "list")
def agents_list(
    status: Annotated[
        str | None, typer.Option("--status", help="draft, building, ready, failed, archived.")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="In name, description, role.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Archived agents too (else hidden).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Your agents; archived ones only with --all (or --status archived)."""
    with _client() as client:
        agents = client.agents.list(status=status, search=search, tag=tag, limit=1000)
    if not (show_all or status):
        # The API has no "not archived" filter: they are left out here.
        agents = [found for found in agents if found["status"] != "archived"]
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
    print_table(out, _table(["id", "name", "status", "version", "runs", "ok"], rows))


@command(agents_app, "get")
def agents_get(agent: AgentRef, as_json: JsonOption = False) -> None:
    """One agent."""
    with _client() as client:
        found = client.agents.get(agent)
    if as_json:
        _print_json(found)
        return
    pairs = []
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
        if value in (None, "", []):
            continue
        if name in ("last_execution", "created_at"):
            value = _when(value)
        elif isinstance(value, list):
            value = ", ".join(value)
        pairs.append((name, value))
    print_table(out, _fields(pairs))


@command(agents_app, "versions")
def agents_versions(
    agent: AgentRef,
    show_log: Annotated[
        bool, typer.Option("--log", help="Print the newest version's build log.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-F", help="Follow the newest version's build log until the build ends."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """An agent's versions and their builds.

    `--follow` prints the newest build's log as it is written, until the build ends (exit
    code 1 when it failed)."""
    with _client() as client:
        versions = client.versions.list(agent, limit=1000)
        if follow and versions:

            def line(text: str) -> None:
                if not as_json:
                    sys.stderr.write(clean(text) + "\n")
                    sys.stderr.flush()

            newest = client.versions.wait(
                agent, versions[-1]["number"], on_log=line, raise_on_failure=False
            )
            versions[-1] = newest
    if as_json:
        _print_json(versions)
    else:
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
        print_table(
            out, _table(["id", "version", "status", "entrypoint", "bytes", "created"], rows)
        )
        if show_log and versions and not follow:
            _write_out(versions[-1]["build_log"] or "")
    if follow and versions and versions[-1]["status"] == "failed":
        raise typer.Exit(FAILED)


@command(agents_app, "archive")
def agents_archive(agent: AgentRef, as_json: JsonOption = False) -> None:
    """Archive an agent: it no longer runs; its versions and runs are kept.

    `aimos agents restore` brings it back."""
    with _client() as client:
        archived = client.agents.archive(agent)
    if as_json:
        _print_json(archived)
    else:
        _write_out(f"{archived['name']} is {archived['status']}.")


@command(agents_app, "restore")
def agents_restore(agent: AgentRef, as_json: JsonOption = False) -> None:
    """Bring an archived agent back: it runs and takes new versions again.

    Its status is then the one its versions give it (ready when its current version is
    built)."""
    with _client() as client:
        restored = client.agents.restore(agent)
    if as_json:
        _print_json(restored)
    else:
        _write_out(f"{restored['name']} is {restored['status']}.")


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
    checks = found.get("checks") or {}
    queues = found.get("queues") or {}
    pairs = [
        ("server", client.base_url),
        ("status", found.get("status")),
        ("version", f"{found.get('version')} ({found.get('environment')})"),
        ("checks", ", ".join(f"{name} {value}" for name, value in checks.items())),
        ("workers", (found.get("workers") or {}).get("count")),
        ("queues", ", ".join(f"{k} {v}" for k, v in queues.items())),
        ("sandbox", sandbox_text),
        ("agents", f"{found.get('active_agents')} active of {found.get('total_agents')}"),
    ]
    print_table(out, _fields(pairs))


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # outside a command: the help, say, to a closed pipe
        try:
            _quiet_exit()
        except typer.Exit:
            sys.exit(OK)


if __name__ == "__main__":
    main()
