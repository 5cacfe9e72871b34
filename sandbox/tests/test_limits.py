"""Limits of a run: the manifest's wishes capped by the server, and choosing a backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.sandbox_settings import sandbox_config
from sandbox import get_backend, limits_for
from sandbox.backends import SandboxConfig
from sandbox.process_backend import ProcessBackend

SERVER = SandboxConfig(
    max_timeout_seconds=60,
    max_memory_mb=512,
    max_cpus=1.0,
    max_pids=100,
    max_output_bytes=5000,
    max_file_mb=10,
    max_open_files=64,
    workspace_mb=32,
)


def test_defaults_without_wishes():
    limits = limits_for({}, config=SERVER)
    assert (limits.timeout_seconds, limits.memory_mb, limits.cpus, limits.pids) == (
        30.0,
        256,
        0.5,
        64,
    )
    assert (limits.max_output_bytes, limits.max_file_mb, limits.max_open_files) == (5000, 10, 64)
    assert limits.workspace_mb == 32
    assert limits.network is False


def test_manifest_wishes_within_the_maxima_are_granted():
    manifest = {"timeout": 45, "resources": {"memory_mb": 300, "cpus": 0.25, "pids": 10}}
    limits = limits_for(manifest, config=SERVER)
    assert (limits.timeout_seconds, limits.memory_mb, limits.cpus, limits.pids) == (
        45.0,
        300,
        0.25,
        10,
    )


def test_wishes_are_capped_by_the_server():
    manifest = {"timeout": 9999, "resources": {"memory_mb": 8192, "cpus": 16, "pids": 5000}}
    limits = limits_for(manifest, config=SERVER)
    assert (limits.timeout_seconds, limits.memory_mb, limits.cpus, limits.pids) == (
        60.0,
        512,
        1.0,
        100,
    )


def test_timeout_of_the_execution_wins_over_the_manifest_and_is_capped():
    assert limits_for({"timeout": 10}, timeout_seconds=20, config=SERVER).timeout_seconds == 20
    assert limits_for({"timeout": 10}, timeout_seconds=600, config=SERVER).timeout_seconds == 60


def test_network_needs_the_manifest_and_the_server():
    assert limits_for({"network": True}, config=SERVER).network is False
    allowed = replace(SERVER, allow_network=True)
    assert limits_for({"network": True}, config=allowed).network is True
    assert limits_for({"network": False}, config=allowed).network is False


@pytest.mark.parametrize(
    "manifest", [{"timeout": -1}, {"timeout": "5"}, {"resources": {"memory_mb": 0}},
                 {"resources": {"pids": True}}, {"resources": [1]}]
)  # fmt: skip
def test_invalid_values_are_refused(manifest):
    with pytest.raises(ValueError):
        limits_for(manifest, config=SERVER)


def test_settings_are_the_default_maxima(settings):
    settings.AIMOS_MAX_MEMORY_MB = 100
    assert sandbox_config().max_memory_mb == 100
    assert limits_for({"resources": {"memory_mb": 4096}}, config=sandbox_config()).memory_mb == 100


def test_get_backend_follows_the_setting(settings):
    settings.AIMOS_SANDBOX = "process"
    backend = get_backend(config=sandbox_config())
    assert isinstance(backend, ProcessBackend)
    assert backend.root == settings.AIMOS_SANDBOX_ROOT


def test_get_backend_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        get_backend("vm", config=SERVER)
