"""`aimos login`: the URL and a key stored for the user only, used by later commands;
AIMOS_URL / AIMOS_API_KEY win over what is stored."""

from __future__ import annotations

import json
import stat

import pytest
from aimos_client import AuthenticationError, Client

from tests.client.conftest import Cli, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh(live, home, tmp_path, aimos_command) -> Cli:
    """`aimos` with nothing configured: no AIMOS_URL, no key."""
    work = tmp_path / "work"
    work.mkdir()
    return Cli(cli_env(home), work)


def stored(home) -> tuple[dict, int]:
    path = home / ".config" / "aimos" / "config.json"
    return json.loads(path.read_text()), stat.S_IMODE(path.stat().st_mode)


def test_login_with_a_password_mints_a_key_stored_for_the_user_only(fresh, live, home, client):
    logged = fresh(
        "login", "--url", live.url, "--username", "owner", "--password", "correct-horse-battery"
    )
    assert logged.returncode == 0, logged.stderr
    config, mode = stored(home)
    assert mode == 0o600
    assert stat.S_IMODE((home / ".config" / "aimos").stat().st_mode) == 0o700
    assert config["url"] == live.url
    assert config["api_key"].startswith("aimos_")
    assert any(key["name"].startswith("aimos CLI on ") for key in client.keys.list())

    me = fresh.json("whoami")  # no AIMOS_URL, no AIMOS_API_KEY: the stored login
    assert me["username"] == "owner" and me["url"] == live.url

    fresh.env["AIMOS_API_KEY"] = "aimos_0000_wrong"
    assert fresh("whoami").returncode == 3  # the environment wins over the file

    del fresh.env["AIMOS_API_KEY"]
    out = fresh.json("logout", "--revoke")
    assert out == {"removed": True, "revoked": True}
    assert fresh.json("whoami", code=3)["error"]["code"] == "not_logged_in"
    with Client(live.url, api_key=config["api_key"]) as revoked:
        with pytest.raises(AuthenticationError):
            revoked.auth.me()


def test_login_asks_for_the_url_and_a_key(fresh, live, home, api_key):
    answered = fresh("login", input=f"{live.url}\n{api_key}\n")
    assert answered.returncode == 0, answered.stderr
    assert "AIMOS URL" in answered.stderr
    config, mode = stored(home)
    assert config == {"url": live.url, "api_key": api_key}
    assert mode == 0o600


def test_a_wrong_key_is_not_stored(fresh, live, home):
    refused = fresh("login", "--url", live.url, "--api-key", "aimos_0000_wrong")
    assert refused.returncode == 3
    assert not (home / ".config" / "aimos" / "config.json").exists()
    wrong = fresh(
        "login", "--url", live.url, "--username", "owner", "--password", "not-the-password"
    )
    assert wrong.returncode == 3
