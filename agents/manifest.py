"""The agent manifest, `aimos.yaml`: strict parsing and validation into one normalised dict.

`load_manifest(package_dir)` returns, for a valid package, a JSON-serialisable dict with
every key present::

    {"name": "my-agent", "entrypoint": "agent.main:handle", "runtime": "python3.11",
     "requirements": "requirements.txt" | None, "timeout": 30,
     "resources": {"memory_mb": 256, "cpus": 0.5, "pids": 64},
     "network": False, "env": {"LOG_LEVEL": "info"}, "reuse": False}

`reuse: true` lets one sandbox serve many runs of the version for the same owner, one at a
time (the server caps it: AIMOS_REUSE_MAX_RUNS, 0 turns it off); see the README for the
isolation that gives up.

The values are what the author asked for. Capping them by the server's maxima
(AIMOS_MAX_TIMEOUT_SECONDS, AIMOS_MAX_MEMORY_MB, AIMOS_MAX_CPUS, AIMOS_MAX_PIDS,
AIMOS_SANDBOX_ALLOW_NETWORK) is the job of `sandbox.limits`, at run time, so a change of
server settings applies to versions already built.
"""

from __future__ import annotations

import keyword
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from core.errors import ServiceError
from sandbox.limits import DEFAULTS

MANIFEST_NAMES = ("aimos.yaml", "aimos.yml")
MAX_MANIFEST_BYTES = 64 * 1024
# A manifest needs two levels (`resources: {...}`); anything much deeper is an attack.
MAX_NESTING = 8

RUNTIMES = ("python3.11", "python3")
DEFAULT_RUNTIME = "python3.11"
DEFAULT_TIMEOUT = int(DEFAULTS.timeout_seconds)
DEFAULT_RESOURCES = {"memory_mb": DEFAULTS.memory_mb, "cpus": DEFAULTS.cpus, "pids": DEFAULTS.pids}
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
# Set by the platform or the runner; letting an agent change them would let it change how
# its own interpreter starts (PYTHON*, LD_*) or pass for the platform (AIMOS_*).
RESERVED_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TMPDIR", "HOSTNAME"}
)
RESERVED_ENV_PREFIXES = ("AIMOS_", "PYTHON", "LD_")


class ManifestError(ServiceError):
    """The manifest is missing or invalid; `errors` names each bad field."""

    code = "invalid_manifest"


def load_manifest(package_dir: Path) -> dict[str, Any]:
    """Read, parse and validate the manifest of the unpacked package in `package_dir`.

    Guarantees on return: the file was `aimos.yaml` or `aimos.yml` (not both), inside the
    package, at most 64 KiB, plain YAML (no anchors, aliases or tags, no duplicate keys);
    every field is valid and defaults are filled in; the entrypoint's module and the
    requirements file exist inside the package (symlinks resolved). Raises ManifestError,
    with every problem found in `errors`, otherwise. Server maxima are not applied here.
    """
    root = Path(package_dir).resolve()
    path = _find_manifest(root)
    data = _parse(_read(path), path.name)
    if not isinstance(data, dict):
        raise _file_error(f"{path.name} must be a mapping of manifest fields")
    errors: list[dict[str, str]] = []
    manifest = _validate(data, root, errors)
    if errors:
        summary = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
        raise ManifestError(f"{path.name} is invalid: {summary}", errors=errors)
    return manifest


# --- the file -----------------------------------------------------------------------------


def _file_error(message: str) -> ManifestError:
    return ManifestError(message, errors=[{"field": None, "message": message}])


def _inside(root: Path, path: Path) -> Path | None:
    """`path` with symlinks resolved, or None if it leads outside `root`."""
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) else None


def _present(path: Path) -> bool:
    """Whether anything is at `path`, a dangling symlink included."""
    return path.exists() or path.is_symlink()


def _find_manifest(root: Path) -> Path:
    found = [root / name for name in MANIFEST_NAMES if _present(root / name)]
    if not found:
        raise _file_error("The package has no aimos.yaml at its top level")
    if len(found) > 1:
        raise _file_error("The package has both aimos.yaml and aimos.yml; keep one")
    path = found[0]
    resolved = _inside(root, path)
    if resolved is None:
        raise _file_error(f"{path.name} points outside the package")
    if not resolved.is_file():
        raise _file_error(f"{path.name} is not a regular file")
    return resolved


def _read(path: Path) -> bytes:
    with open(path, "rb") as file:
        # Read one byte more than allowed rather than trusting the size on disk.
        data = file.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise _file_error(f"{path.name} is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    return data


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases, explicit tags, duplicate keys, deep nesting.

    Aliases are how a few hundred bytes expand to gigabytes ("billion laughs"); tags such as
    `!!python/object` are how YAML builds objects. Neither has a use in a manifest, so they
    are refused before anything is constructed, with a message that says so.
    """

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise _file_error(f"YAML aliases (*{event.anchor}) are not allowed (line {line})")
        if getattr(event, "anchor", None) is not None:
            raise _file_error(f"YAML anchors (&{event.anchor}) are not allowed (line {line})")
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _file_error(f"YAML tags ({shown}) are not allowed (line {line})")
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise _file_error(f"YAML is nested more than {MAX_NESTING} levels (line {line})")
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
                    raise _file_error(f"The key {key_node.value!r} appears twice (line {line})")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _parse(data: bytes, filename: str) -> Any:
    try:
        return yaml.load(data, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _file_error(f"{filename} is not valid YAML: {exc}") from None


# --- the fields ---------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(data: dict, root: Path, errors: list[dict[str, str]]) -> dict[str, Any]:
    def error(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

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
        problem = _check_entrypoint(entrypoint, root)
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


def _check_entrypoint(value: Any, root: Path) -> str | None:
    """What is wrong with `value` as an entrypoint of the package at `root`, or None."""
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
    """(normalised relative path or None, problem or None) for the requirements field."""
    if value is None:
        # Not declared: a top-level requirements.txt is used if there is one.
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
    if not isinstance(cpus, int | float) or isinstance(cpus, bool) or not math.isfinite(cpus):
        error("resources.cpus", "must be a number greater than 0")
    elif cpus <= 0:
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
