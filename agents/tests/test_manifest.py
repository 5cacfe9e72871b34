"""aimos.yaml: valid manifests are normalised, hostile or wrong ones are refused by field."""

import json
import os
import re
from pathlib import Path

import pytest

from agents.manifest import MAX_MANIFEST_BYTES, ManifestError, load_manifest

HANDLER = "def handle(payload):\n    return payload\n"
MINIMAL = "name: my-agent\nentrypoint: agent.main:handle\n"


def make_package(root: Path, manifest: str | None = MINIMAL, files=None, name="aimos.yaml"):
    """A package folder with `manifest` as aimos.yaml and agent/main.py (unless `files`)."""
    root.mkdir(parents=True, exist_ok=True)
    for path, content in (files if files is not None else {"agent/main.py": HANDLER}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    if manifest is not None:
        (root / name).write_text(manifest)
    return root


def rejected(package: Path, message: str) -> ManifestError:
    with pytest.raises(ManifestError, match=re.escape(message)) as caught:
        load_manifest(package)
    assert caught.value.code == "invalid_manifest" and caught.value.status_code == 400
    return caught.value


def fields(error: ManifestError) -> list:
    return [item["field"] for item in error.errors]


# --- valid manifests ------------------------------------------------------------------------


def test_minimal_manifest_gets_every_default(tmp_path):
    manifest = load_manifest(make_package(tmp_path / "pkg"))

    assert manifest == {
        "name": "my-agent",
        "entrypoint": "agent.main:handle",
        "runtime": "python3.11",
        "requirements": None,
        "timeout": 30,
        "resources": {"memory_mb": 256, "cpus": 0.5, "pids": 64},
        "network": False,
        "env": {},
        "reuse": False,
    }
    assert json.loads(json.dumps(manifest)) == manifest


def test_full_manifest_is_normalised(tmp_path):
    package = make_package(
        tmp_path / "pkg",
        """
name: my_agent-2
entrypoint: agent.main:handle
runtime: python3
requirements: ./deps/requirements.txt
timeout: 120
resources: {memory_mb: 512, cpus: 2, pids: 128}
network: true
env: {LOG_LEVEL: info, RETRIES: 3, RATIO: 0.5, VERBOSE: false}
reuse: true
""",
        files={"agent/main.py": HANDLER, "deps/requirements.txt": "httpx\n"},
    )

    manifest = load_manifest(package)

    assert manifest == {
        "name": "my_agent-2",
        "entrypoint": "agent.main:handle",
        "runtime": "python3",
        "requirements": "deps/requirements.txt",
        "timeout": 120,
        "resources": {"memory_mb": 512, "cpus": 2.0, "pids": 128},
        "network": True,
        "env": {"LOG_LEVEL": "info", "RETRIES": "3", "RATIO": "0.5", "VERBOSE": "false"},
        "reuse": True,
    }


def test_partial_resources_keep_the_other_defaults(tmp_path):
    package = make_package(tmp_path / "pkg", MINIMAL + "resources: {cpus: 1.5}\n")

    assert load_manifest(package)["resources"] == {"memory_mb": 256, "cpus": 1.5, "pids": 64}


def test_requirements_txt_is_used_when_not_declared(tmp_path):
    package = make_package(
        tmp_path / "pkg", files={"agent/main.py": HANDLER, "requirements.txt": "httpx\n"}
    )

    assert load_manifest(package)["requirements"] == "requirements.txt"


def test_aimos_yml_is_accepted(tmp_path):
    package = make_package(tmp_path / "pkg", name="aimos.yml")

    assert load_manifest(package)["name"] == "my-agent"


def test_entrypoint_may_be_a_package_with_init(tmp_path):
    package = make_package(
        tmp_path / "pkg",
        "name: x\nentrypoint: agent:handle\n",
        files={"agent/__init__.py": HANDLER},
    )

    assert load_manifest(package)["entrypoint"] == "agent:handle"


# --- the file -----------------------------------------------------------------------------


def test_missing_manifest_is_rejected(tmp_path):
    error = rejected(make_package(tmp_path / "pkg", None), "The package has no aimos.yaml")

    assert error.errors == [{"field": None, "message": error.detail}]


def test_both_yaml_and_yml_are_rejected(tmp_path):
    package = make_package(tmp_path / "pkg")
    (package / "aimos.yml").write_text(MINIMAL)

    rejected(package, "The package has both aimos.yaml and aimos.yml")


def test_oversize_manifest_is_rejected(tmp_path):
    padding = "# " + "x" * 1000 + "\n"
    text = MINIMAL + padding * (MAX_MANIFEST_BYTES // len(padding) + 1)

    rejected(make_package(tmp_path / "pkg", text), "aimos.yaml is larger than 64 KiB")


def test_manifest_symlinked_outside_the_package_is_rejected(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(MINIMAL)
    package = make_package(tmp_path / "pkg", None)
    os.symlink(tmp_path / "elsewhere.yaml", package / "aimos.yaml")

    rejected(package, "aimos.yaml points outside the package")


def test_yaml_alias_bomb_is_refused(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    package = make_package(tmp_path / "pkg", MINIMAL + "\n".join(lines) + "\n")

    rejected(package, "YAML anchors (&a0) are not allowed (line 3)")


def test_yaml_alias_is_refused(tmp_path):
    package = make_package(tmp_path / "pkg", "name: &n my-agent\nentrypoint: *n\n")

    rejected(package, "YAML anchors (&n) are not allowed (line 1)")


def test_python_object_tag_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    package = make_package(
        tmp_path / "pkg", MINIMAL + f'env: !!python/object/apply:os.system ["touch {marker}"]\n'
    )

    rejected(package, "YAML tags (!!python/object/apply:os.system) are not allowed (line 3)")

    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!str", "!custom", "!"])
def test_any_explicit_tag_is_refused(tmp_path, tag):
    package = make_package(tmp_path / "pkg", f"name: {tag} my-agent\nentrypoint: agent.main:f\n")

    rejected(package, "YAML tags")


def test_duplicate_key_is_refused(tmp_path):
    package = make_package(tmp_path / "pkg", MINIMAL + "network: false\nnetwork: true\n")

    rejected(package, "The key 'network' appears twice (line 4)")


def test_deep_nesting_is_refused(tmp_path):
    package = make_package(tmp_path / "pkg", MINIMAL + "env: " + "[" * 5000 + "]" * 5000 + "\n")

    rejected(package, "YAML is nested more than 8 levels")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "aimos.yaml must be a mapping of manifest fields"),
        ("- name\n- entrypoint\n", "aimos.yaml must be a mapping of manifest fields"),
        ("name: [unclosed\n", "aimos.yaml is not valid YAML"),
        ("name: a\n---\nname: b\n", "aimos.yaml is not valid YAML"),
    ],
)
def test_manifest_that_is_not_one_mapping_is_rejected(tmp_path, text, message):
    rejected(make_package(tmp_path / "pkg", text), message)


# --- the fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("../x:f", "must be 'module.path:function' made of Python identifiers"),
        ("/abs/x:f", "must be 'module.path:function' made of Python identifiers"),
        ("agent/main:handle", "must be 'module.path:function' made of Python identifiers"),
        ("agent.main", "must be 'module.path:function' made of Python identifiers"),
        ("agent.main:handle()", "must be 'module.path:function' made of Python identifiers"),
        ("agent.class:handle", "must not use Python keywords"),
        (
            "agent.missing:handle",
            "module 'agent.missing' not found in the package "
            "(looked for agent/missing.py or agent/missing/__init__.py)",
        ),
    ],
)
def test_bad_entrypoint_is_rejected(tmp_path, entrypoint, message):
    package = make_package(tmp_path / "pkg", f"name: x\nentrypoint: '{entrypoint}'\n")

    error = rejected(package, message)

    assert fields(error) == ["entrypoint"]


def test_entrypoint_module_symlinked_outside_the_package_is_rejected(tmp_path):
    (tmp_path / "outside.py").write_text(HANDLER)
    package = make_package(tmp_path / "pkg", "name: x\nentrypoint: evil:handle\n", files={})
    os.symlink(tmp_path / "outside.py", package / "evil.py")

    rejected(package, "entrypoint: module 'evil' points outside the package")


@pytest.mark.parametrize(
    ("requirements", "message"),
    [
        ("../requirements.txt", "must not contain '..'"),
        ("/etc/passwd", "must be a relative path, not an absolute one"),
        ("missing.txt", "'missing.txt' is not a file in the package"),
        ("agent", "'agent' is not a file in the package"),
        ("[a]", "must be a relative path to a file in the package"),
    ],
)
def test_bad_requirements_is_rejected(tmp_path, requirements, message):
    package = make_package(tmp_path / "pkg", MINIMAL + f"requirements: {requirements}\n")

    error = rejected(package, f"requirements: {message}")

    assert fields(error) == ["requirements"]


def test_requirements_symlinked_outside_the_package_is_rejected(tmp_path):
    (tmp_path / "secrets.txt").write_text("token\n")
    package = make_package(tmp_path / "pkg")
    os.symlink(tmp_path / "secrets.txt", package / "requirements.txt")

    rejected(package, "requirements: 'requirements.txt' points outside the package")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("name: My Agent", "name"),
        ("name: -agent", "name"),
        ("name: " + "a" * 65, "name"),
        ("name: 42", "name"),
        ("runtime: python2.7", "runtime"),
        ("runtime: [python3]", "runtime"),
        ("timeout: 0", "timeout"),
        ("timeout: 1.5", "timeout"),
        ("timeout: true", "timeout"),
        ("timeout: '30'", "timeout"),
        ("resources: 256", "resources"),
        ("resources: {memory_mb: 8}", "resources.memory_mb"),
        ("resources: {memory_mb: '256'}", "resources.memory_mb"),
        ("resources: {cpus: 0}", "resources.cpus"),
        ("resources: {cpus: .inf}", "resources.cpus"),
        ("resources: {cpus: true}", "resources.cpus"),
        ("resources: {pids: 4}", "resources.pids"),
        ("resources: {pids: 64.0}", "resources.pids"),
        ("resources: {disk_mb: 10}", "resources.disk_mb"),
        ("network: 'yes please'", "network"),
        ("network: 1", "network"),
        ("reuse: 'yes'", "reuse"),
        ("reuse: 1", "reuse"),
        ("env: [A, B]", "env"),
        ("env: {1X: a}", "env.1X"),
        ("env: {MY-VAR: a}", "env.MY-VAR"),
        ("env: {A: [1, 2]}", "env.A"),
        ("env: {A: null}", "env.A"),
        ("colour: blue", "colour"),
    ],
)
def test_bad_field_is_rejected_and_named(tmp_path, line, field):
    # The name line of MINIMAL is replaced when the case is about the name.
    base = MINIMAL if not line.startswith("name:") else "entrypoint: agent.main:handle\n"
    package = make_package(tmp_path / "pkg", base + line + "\n")

    error = rejected(package, f"aimos.yaml is invalid: {field}: ")

    assert fields(error) == [field]


def test_missing_required_fields_are_named(tmp_path):
    error = rejected(make_package(tmp_path / "pkg", "runtime: python3\n"), "is required")

    assert error.errors == [
        {"field": "name", "message": "is required"},
        {"field": "entrypoint", "message": "is required"},
    ]


def test_unknown_key_is_rejected(tmp_path):
    package = make_package(tmp_path / "pkg", MINIMAL + "secrets: {TOKEN: x}\n")

    error = rejected(package, "secrets: unknown key")

    assert fields(error) == ["secrets"]


@pytest.mark.parametrize(
    "name", ["PATH", "HOME", "PYTHONPATH", "LD_PRELOAD", "AIMOS_API_KEY", "aimos_token"]
)
def test_env_name_reserved_by_the_platform_is_rejected(tmp_path, name):
    package = make_package(tmp_path / "pkg", MINIMAL + f"env: {{{name}: x, OK: y}}\n")

    error = rejected(package, f"env.{name}: is reserved by the platform")

    assert fields(error) == [f"env.{name}"]


def test_every_bad_field_is_reported_at_once(tmp_path):
    package = make_package(
        tmp_path / "pkg",
        "name: Bad Name\nentrypoint: agent.main:handle\ntimeout: -1\nnetwork: maybe\n",
    )

    error = rejected(package, "aimos.yaml is invalid: name: ")

    assert fields(error) == ["name", "timeout", "network"]
