"""Secrets on disk are the server user's alone: var/ and the artifact root 0700; the local
secret key, the generated admin password, the SQLite database and uploaded archives 0600.
Created with those modes (checked under a umask that would leave anything else open to all),
and older, looser ones are tightened."""

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import authenticate
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from agents import services as agent_services
from agents.tests.packages import example_files, pack_files

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")

# Starts Django with chmod refused: whatever it creates keeps the mode it was created with.
SETUP_WITHOUT_CHMOD = """
import os
def refuse(*args, **kwargs):
    raise AssertionError(f"chmod{args}: a file was created with a looser mode first")
os.chmod = refuse
import django
django.setup()
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_locally(var: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Python on a checkout with DEBUG=1, no SECRET_KEY and no DATABASE_URL (the local
    defaults: a key kept in var/, SQLite in var/), under umask 0."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(
        {
            "AIMOS_VAR_DIR": str(var),
            "DEBUG": "1",
            "SECRET_KEY": "",
            "DATABASE_URL": "",
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_SETTINGS_MODULE": "aimos.settings",
        }
    )
    return subprocess.run(
        [sys.executable, *argv],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0),
    )


@pytest.fixture
def umask_zero():
    """Anything created with the default mode would be open to everyone."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def no_chmod(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"chmod{args}: a file was created with a looser mode first")

    monkeypatch.setattr(os, "chmod", refuse)


def test_the_var_dir_its_secret_key_and_the_sqlite_database_are_created_private(tmp_path):
    var = tmp_path / "var"

    result = run_locally(var, ["-c", SETUP_WITHOUT_CHMOD])

    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(var) == 0o700
    assert mode(var / "secret_key") == 0o600
    assert len((var / "secret_key").read_text().strip()) >= 50
    assert mode(var / "aimos.sqlite3") == 0o600
    assert not [path.name for path in var.iterdir() if path.name.startswith(".secret_key")]


def test_a_second_start_keeps_the_key_and_tightens_what_was_loosened(tmp_path):
    var = tmp_path / "var"
    assert run_locally(var, [MANAGE, "check"]).returncode == 0
    key = (var / "secret_key").read_text()
    var.chmod(0o755)
    (var / "secret_key").chmod(0o644)
    (var / "aimos.sqlite3").chmod(0o666)

    result = run_locally(var, [MANAGE, "check"])

    assert result.returncode == 0, result.stdout + result.stderr
    assert (var / "secret_key").read_text() == key
    assert mode(var) == 0o700
    assert mode(var / "secret_key") == 0o600
    assert mode(var / "aimos.sqlite3") == 0o600


@pytest.fixture
def password_file(monkeypatch, settings, tmp_path):
    """Where ensure_admin writes the password it generates (no admin, none configured)."""
    monkeypatch.delenv("AIMOS_ADMIN_PASSWORD", raising=False)
    monkeypatch.setenv("AIMOS_ADMIN_USERNAME", "root-admin")
    settings.VAR_DIR = tmp_path
    return tmp_path / "admin-password"


@pytest.mark.django_db
def test_the_generated_admin_password_is_written_readable_by_the_owner_only(
    password_file, umask_zero, no_chmod
):
    call_command("ensure_admin", stdout=io.StringIO())

    assert mode(password_file) == 0o600
    password = password_file.read_text().strip()
    assert authenticate(username="root-admin", password=password) is not None


@pytest.mark.django_db
def test_an_older_world_readable_admin_password_file_is_replaced_by_a_private_one(
    password_file, umask_zero, no_chmod
):
    password_file.write_text("an old password\n")  # 0666 under this umask

    call_command("ensure_admin", stdout=io.StringIO())

    assert mode(password_file) == 0o600
    password = password_file.read_text().strip()
    assert password != "an old password"
    assert authenticate(username="root-admin", password=password) is not None


def upload_echo(owner):
    agent = agent_services.create_agent(owner, name="probe")
    archive = SimpleUploadedFile("echo.tar.gz", pack_files(example_files("echo")))
    return agent_services.create_version(agent, archive)


@pytest.mark.django_db
def test_uploaded_archives_are_kept_private_under_a_private_artifact_root(
    owner, settings, tmp_path, umask_zero
):
    root = tmp_path / "artifacts"
    settings.AIMOS_ARTIFACT_ROOT = root

    version = upload_echo(owner)

    assert mode(root) == 0o700
    assert mode(version.artifact_path) == 0o600
    assert (version.source_dir / "aimos.yaml").is_file()


@pytest.mark.django_db
def test_an_older_open_artifact_root_is_tightened(owner, settings, tmp_path):
    root = tmp_path / "artifacts"
    root.mkdir()
    root.chmod(0o755)
    settings.AIMOS_ARTIFACT_ROOT = root

    upload_echo(owner)

    assert mode(root) == 0o700
