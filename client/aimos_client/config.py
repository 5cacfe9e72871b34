"""Where the `aimos` command keeps the server's URL and the API key.

The file is `$XDG_CONFIG_HOME/aimos/config.json` (`~/.config/aimos/config.json` when that
is not set), `{"url": …, "api_key": …}` (and `key_id`, `username` when `aimos login` minted
the key itself), written with mode 0600 in a folder of mode 0700.
`AIMOS_URL` and `AIMOS_API_KEY` override what it holds; the command's `--url` and
`--api-key` override both.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG rule: a relative path is ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "aimos" / "config.json"


def load() -> dict:
    """What the file holds ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(url: str, api_key: str, **extra: str) -> Path:
    """Write the URL and key (and `extra` fields); only the user can read the file, and the
    file is replaced at once (never seen half written)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A new file of an unguessable name, never one found there (nor a link followed).
    temporary = path.with_name(f".config.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and an older file's mode
        with os.fdopen(fd, "w") as file:
            json.dump({"url": url, "api_key": api_key, **extra}, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def remove() -> bool:
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Credentials:
    url: str
    api_key: str | None
    source: str  # where the key came from: option, environment, config file, or none
    url_source: str = "default"  # where the URL came from: option, environment, config file


def resolve(url: str | None = None, api_key: str | None = None) -> Credentials:
    """The URL and key to use: options, then the environment, then the config file."""
    stored = load()
    if url:
        final_url, url_source = url, "option"
    elif os.environ.get("AIMOS_URL"):
        final_url, url_source = os.environ["AIMOS_URL"], "environment"
    elif stored.get("url"):
        final_url, url_source = str(stored["url"]), str(config_path())
    else:
        final_url, url_source = DEFAULT_URL, "default"
    if api_key:
        return Credentials(final_url, api_key, "option", url_source)
    if os.environ.get("AIMOS_API_KEY"):
        return Credentials(final_url, os.environ["AIMOS_API_KEY"], "environment", url_source)
    if stored.get("api_key"):
        return Credentials(final_url, str(stored["api_key"]), str(config_path()), url_source)
    return Credentials(final_url, None, "none", url_source)
