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


def cli_keys(client) -> list[dict]:
    return [key for key in client.keys.list() if key["name"].startswith("aimos CLI on ")]


def works(url: str, key: str) -> bool:
    with Client(url, api_key=key) as aimos:
        try:
            aimos.auth.me()
        except AuthenticationError:
            return False
    return True


def test_a_password_login_again_reuses_the_stored_key(fresh, live, home, client, other):
    password = ("--password", "correct-horse-battery")
    first = fresh.json("login", "--url", live.url, "-u", "owner", *password)
    assert first["key"] == "minted"
    minted, _ = stored(home)
    assert minted["key_id"] == cli_keys(client)[0]["id"]

    again = fresh.json("login", "--url", live.url, "-u", "owner", *password)
    assert again["key"] == "reused" and again["revoked_previous"] is False
    assert stored(home)[0] == minted
    assert len(cli_keys(client)) == 1  # no second key for the same machine
    said = fresh("login", "--url", live.url, "-u", "owner", *password)
    assert "the stored key still works and was kept" in said.stderr

    # A wrong password is refused even though the stored key works.
    assert fresh("login", "--url", live.url, "-u", "owner", "--password", "nope").returncode == 3

    # The stored key revoked on the server: a new one is minted.
    client.keys.revoke(minted["key_id"])
    renewed = fresh.json("login", "--url", live.url, "-u", "owner", *password)
    assert renewed["key"] == "minted"
    config, _ = stored(home)
    assert config["api_key"] != minted["api_key"] and works(live.url, config["api_key"])
    assert [key["id"] for key in cli_keys(client)] == [config["key_id"]]


def test_a_new_key_revokes_the_one_the_last_login_minted(fresh, live, home, client, other):
    password = ("--password", "correct-horse-battery")
    fresh.json("login", "--url", live.url, "-u", "owner", *password)
    before, _ = stored(home)

    named = fresh.json("login", "--url", live.url, "-u", "owner", *password, "--key-name", "ci")
    assert (named["key"], named["revoked_previous"]) == ("minted", True)
    after, _ = stored(home)
    assert not works(live.url, before["api_key"]) and works(live.url, after["api_key"])
    assert {key["name"] for key in client.keys.list()} == {"client tests", "ci"}

    # Another user on the same server: the owner's key this login minted is revoked too.
    switched = fresh.json("login", "--url", live.url, "-u", "other", *password)
    assert (switched["username"], switched["revoked_previous"]) == ("other", True)
    assert not works(live.url, after["api_key"])

    # A key given by hand is the user's: never revoked by a later login.
    given = client.keys.create("by hand")["key"]
    assert fresh.json("login", "--url", live.url, "--api-key", given)["revoked_previous"] is True
    assert stored(home)[0] == {"url": live.url, "api_key": given}
    fresh.json("login", "--url", live.url, "-u", "owner", *password)
    assert works(live.url, given)


def test_login_asks_for_the_url_and_a_key(fresh, live, home, api_key):
    answered = fresh("login", input=f"{live.url}\n{api_key}\n")
    assert answered.returncode == 0, answered.stderr
    assert "AIMOS URL" in answered.stderr
    assert "Warning" not in answered.stderr  # the key was read from stdin, no getpass noise
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
