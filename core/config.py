"""Typed access to the environment for settings.

Every helper fails with ImproperlyConfigured naming the variable when its value is bad,
so a misconfigured server stops at start instead of misbehaving later. A variable
`NAME_FILE` is read as the value of `NAME` (for secrets mounted as files).
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def raw(name: str, default: str | None = None) -> str | None:
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        try:
            return Path(file_path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {file_path}: {exc}") from exc
    return os.environ.get(name, default)


def string(name: str, default: str = "") -> str:
    return raw(name, default) or default


def boolean(name: str, default: bool = False) -> bool:
    value = raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def integer(name: str, default: int, *, minimum: int | None = None) -> int:
    value = raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def number(name: str, default: float, *, minimum: float | None = None) -> float:
    value = raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        result = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {result}")
    return result


def csv(name: str, default: str = "") -> list[str]:
    value = raw(name, default) or ""
    return [item.strip() for item in value.split(",") if item.strip()]


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = string(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def rate(name: str, default: str) -> str:
    """A DRF throttle rate such as `100/min`."""
    value = string(name, default).strip()
    count, _, period = value.partition("/")
    if not count.isdigit() or not period or period[0] not in "smhd":
        raise ImproperlyConfigured(
            f"{name} must look like 100/min (per s, min, hour or day), got {value!r}"
        )
    return value


def integers(name: str, default: str) -> list[int]:
    """A comma-separated list of non-negative integers, such as `10,60,300`."""
    items = csv(name, default)
    if not all(item.isdigit() for item in items):
        raise ImproperlyConfigured(f"{name} must be comma-separated whole numbers, got {items!r}")
    return [int(item) for item in items]
