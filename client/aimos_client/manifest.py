"""Checking an agent's `aimos.yaml` on this side, before anything is uploaded.

The rules are the server's (`agents/manifest.py` in the AIMOS repository): the same required
keys, name and entrypoint formats, known keys, field types and limits, and the entrypoint's
module and the requirements file found inside the folder. The server checks again on upload
and has the last word; its maxima (timeout, memory, …) apply at run time, not here.
"""

from __future__ import annotations

import keyword
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from aimos_client.errors import AimosError, FieldError

MANIFEST_NAMES = ("aimos.yaml", "aimos.yml")
MAX_MANIFEST_BYTES = 64 * 1024
MAX_NESTING = 8
RUNTIMES = ("python3.11", "python3")
DEFAULT_RUNTIME = "python3.11"
DEFAULT_TIMEOUT = 30
DEFAULT_RESOURCES = {"memory_mb": 256, "cpus": 0.5, "pids": 64}
MIN_MEMORY_MB = 16
MIN_PIDS = 8
KNOWN_KEYS = (
    "name",
    "entrypoint",
    "runtime",
    "requirements",
    "timeout",
    "resources",
    "network",
    "env",
    "reuse",
)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRYPOINT_RE = re.compile(rf"({IDENTIFIER}(?:\.{IDENTIFIER})*):({IDENTIFIER})")
ENV_NAME_RE = re.compile(IDENTIFIER)
RESERVED_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TMPDIR", "HOSTNAME"}
)
RESERVED_ENV_PREFIXES = ("AIMOS_", "PYTHON", "LD_")


class ManifestError(AimosError):
    """The folder's manifest is missing or invalid; `errors` names each problem."""

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        self.errors = errors or [FieldError(None, message)]
        super().__init__(message)


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The validated manifest of the agent in `folder`, with defaults filled in; raises
    ManifestError naming every problem found."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ManifestError(f"{folder} is not a folder")
    path = _find_manifest(root)
    with open(path, "rb") as file:
        data = file.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path.name} is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    try:
        parsed = yaml.load(data, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path.name} is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict):
        raise ManifestError(f"{path.name} must be a mapping of manifest fields")
    errors: list[FieldError] = []
    manifest = _validate(parsed, root, errors)
    if errors:
        summary = "; ".join(str(error) for error in errors)
        raise ManifestError(f"{path.name} is invalid: {summary}", errors)
    return manifest


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _inside(root: Path, path: Path) -> Path | None:
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) else None


def _find_manifest(root: Path) -> Path:
    found = [root / name for name in MANIFEST_NAMES if _present(root / name)]
    if not found:
        raise ManifestError(f"{root} has no aimos.yaml (run `aimos init` to make one)")
    if len(found) > 1:
        raise ManifestError("The folder has both aimos.yaml and aimos.yml; keep one")
    resolved = _inside(root, found[0])
    if resolved is None:
        raise ManifestError(f"{found[0].name} points outside the folder")
    if not resolved.is_file():
        raise ManifestError(f"{found[0].name} is not a regular file")
    return resolved


class _StrictLoader(yaml.SafeLoader):
    """Refuses what the server refuses: anchors, aliases, tags, duplicate keys, deep nesting."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ManifestError(f"YAML aliases (*{event.anchor}) are not allowed (line {line})")
        if getattr(event, "anchor", None) is not None:
            raise ManifestError(f"YAML anchors (&{event.anchor}) are not allowed (line {line})")
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise ManifestError(f"YAML tags ({shown}) are not allowed (line {line})")
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise ManifestError(f"YAML is nested more than {MAX_NESTING} levels (line {line})")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    line = key_node.start_mark.line + 1
                    raise ManifestError(f"The key {key_node.value!r} appears twice (line {line})")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(data: dict, root: Path, errors: list[FieldError]) -> dict[str, Any]:
    def error(name: str, message: str) -> None:
        errors.append(FieldError(name, message))

    for key in data:
        if key not in KNOWN_KEYS:
            error(str(key), f"unknown key (known keys: {', '.join(KNOWN_KEYS)})")

    name = data.get("name")
    if name is None:
        error("name", "is required")
    elif not isinstance(name, str) or not NAME_RE.fullmatch(name):
        error(
            "name",
            "must be 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit",
        )

    entrypoint = data.get("entrypoint")
    if entrypoint is None:
        error("entrypoint", "is required")
    else:
        problem = check_entrypoint(entrypoint, root)
        if problem:
            error("entrypoint", problem)

    runtime = data.get("runtime", DEFAULT_RUNTIME)
    if runtime not in RUNTIMES:
        error("runtime", f"must be one of {', '.join(RUNTIMES)}")

    requirements, problem = _check_requirements(data.get("requirements"), root)
    if problem:
        error("requirements", problem)

    timeout = data.get("timeout", DEFAULT_TIMEOUT)
    if not _is_int(timeout) or timeout <= 0:
        error("timeout", "must be a positive whole number of seconds")

    resources = _check_resources(data.get("resources"), error)

    network = data.get("network", False)
    if not isinstance(network, bool):
        error("network", "must be true or false")

    env = _check_env(data.get("env"), error)

    reuse = data.get("reuse", False)
    if not isinstance(reuse, bool):
        error("reuse", "must be true or false")

    return {
        "name": name,
        "entrypoint": entrypoint,
        "runtime": runtime,
        "requirements": requirements,
        "timeout": timeout,
        "resources": resources,
        "network": network,
        "env": env,
        "reuse": reuse,
    }


def check_entrypoint(value: Any, root: Path) -> str | None:
    """What is wrong with `value` as the entrypoint of the agent in `root`, or None."""
    match = ENTRYPOINT_RE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return "must be 'module.path:function' made of Python identifiers"
    module, function = match.groups()
    parts = module.split(".")
    if any(keyword.iskeyword(part) for part in parts + [function]):
        return "must not use Python keywords as module or function names"
    candidates = [
        root.joinpath(*parts[:-1], parts[-1] + ".py"),
        root.joinpath(*parts, "__init__.py"),
    ]
    for candidate in candidates:
        if not _present(candidate):
            continue
        resolved = _inside(root, candidate)
        if resolved is None:
            return f"module {module!r} points outside the package"
        if resolved.is_file():
            return None
    where = " or ".join(candidate.relative_to(root).as_posix() for candidate in candidates)
    return f"module {module!r} not found in the package (looked for {where})"


def _check_requirements(value: Any, root: Path) -> tuple[str | None, str | None]:
    if value is None:
        if not _present(root / "requirements.txt"):
            return None, None
        value = "requirements.txt"
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        return None, "must be a relative path to a file in the package"
    if value.startswith("/"):
        return None, "must be a relative path, not an absolute one"
    parts = PurePosixPath(value).parts
    if ".." in parts:
        return None, "must not contain '..'"
    resolved = _inside(root, root.joinpath(*parts))
    if resolved is None:
        return None, f"{value!r} points outside the package"
    if not resolved.is_file():
        return None, f"{value!r} is not a file in the package"
    return PurePosixPath(*parts).as_posix(), None


def _check_resources(value: Any, error) -> dict[str, Any]:
    resources = dict(DEFAULT_RESOURCES)
    if value is None:
        return resources
    if not isinstance(value, dict):
        error("resources", "must be a mapping of memory_mb, cpus and pids")
        return resources
    for key in value:
        if key not in DEFAULT_RESOURCES:
            error(f"resources.{key}", "unknown key (known keys: memory_mb, cpus, pids)")
    memory_mb = value.get("memory_mb", resources["memory_mb"])
    if not _is_int(memory_mb) or memory_mb < MIN_MEMORY_MB:
        error("resources.memory_mb", f"must be a whole number of MB, at least {MIN_MEMORY_MB}")
    else:
        resources["memory_mb"] = memory_mb
    cpus = value.get("cpus", resources["cpus"])
    if (
        not isinstance(cpus, int | float)
        or isinstance(cpus, bool)
        or not math.isfinite(cpus)
        or cpus <= 0
    ):
        error("resources.cpus", "must be a number greater than 0")
    else:
        resources["cpus"] = float(cpus)
    pids = value.get("pids", resources["pids"])
    if not _is_int(pids) or pids < MIN_PIDS:
        error("resources.pids", f"must be a whole number, at least {MIN_PIDS}")
    else:
        resources["pids"] = pids
    return resources


def _check_env(value: Any, error) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        error("env", "must be a mapping of variable names to values")
        return {}
    env = {}
    for name, raw in value.items():
        field = f"env.{name}"
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            error(field, "must be a name of letters, digits and '_', not starting with a digit")
            continue
        upper = name.upper()
        if upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES):
            error(field, "is reserved by the platform")
            continue
        if isinstance(raw, bool):
            env[name] = "true" if raw else "false"
        elif isinstance(raw, int | float | str):
            text = str(raw)
            if "\x00" in text:
                error(field, "must not contain NUL characters")
                continue
            env[name] = text
        else:
            error(field, "must be a string, a number or a boolean")
    return env
