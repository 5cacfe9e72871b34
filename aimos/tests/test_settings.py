"""Settings from the environment: production-ready when configured so, loud when wrong."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MANAGE, *args], capture_output=True, text=True, env=env, timeout=120
    )


def base_environment(tmp_path) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key in {"PATH", "HOME", "LANG", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"}
    }
    env["AIMOS_VAR_DIR"] = str(tmp_path / "var")
    return env


def test_a_production_configuration_passes_the_deploy_checks(tmp_path):
    env = {
        **base_environment(tmp_path),
        "DEBUG": "0",
        "SECRET_KEY": "p" * 10 + "9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a",
        "ALLOWED_HOSTS": "aimos.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://aimos.example.com",
        "SECURE_SSL_REDIRECT": "1",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
        "SECURE_HSTS_PRELOAD": "1",
        "SECURE_PROXY_SSL_HEADER": "1",
    }

    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_debug_a_secret_key_is_required(tmp_path):
    # Set empty rather than absent, so a developer's .env cannot fill it in.
    env = {**base_environment(tmp_path), "DEBUG": "0", "SECRET_KEY": ""}

    result = manage("check", env=env)

    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ACCESS_TOKEN_EXPIRE_MINUTES", "abc"),
        ("REFRESH_TOKEN_EXPIRE_DAYS", "0"),
        ("THROTTLE_USER_RATE", "lots"),
        ("NUM_PROXIES", "-1"),
        ("DEBUG", "maybe"),
    ],
)
def test_a_bad_value_stops_the_server_naming_the_variable(tmp_path, name, value):
    env = {**base_environment(tmp_path), "DEBUG": "1", name: value}

    result = manage("check", env=env)

    assert result.returncode != 0
    assert name in result.stderr
    assert "ImproperlyConfigured" in result.stderr
