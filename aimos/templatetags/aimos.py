"""Template helpers of the dashboard: status badges, JSON, durations, short ids."""

import json

from django import template
from django.utils.html import format_html

register = template.Library()

LABELS = {"timed_out": "timed out"}


@register.simple_tag
def badge(status, id=""):
    """A coloured status badge; the colour comes from the status (`static/css/aimos.css`)."""
    status = str(status or "unknown")
    if id:
        return format_html(
            '<span class="badge badge-{}" id="{}" data-status="{}">{}</span>',
            status,
            id,
            status,
            LABELS.get(status, status),
        )
    return format_html(
        '<span class="badge badge-{}" data-status="{}">{}</span>',
        status,
        status,
        LABELS.get(status, status),
    )


@register.filter
def pretty_json(value) -> str:
    """Indented JSON of a value (what an agent got or gave back)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@register.filter
def compact_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@register.filter
def duration_ms(value) -> str:
    """850 ms, 12.3 s, 4 min 05 s, 2 h 03 min."""
    if value is None or value == "":
        return "—"
    ms = int(value)
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def duration_s(value) -> str:
    return "—" if value is None else duration_ms(int(value) * 1000)


@register.filter
def uptime(seconds) -> str:
    """45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@register.filter
def short_id(value) -> str:
    return str(value)[:8]


@register.filter
def percent(value) -> str:
    return "—" if value is None else f"{float(value):.0f}%"


@register.filter
def startswith(value, prefix) -> bool:
    return str(value).startswith(str(prefix))


@register.simple_tag
def aimos_version() -> str:
    from django.conf import settings

    return settings.AIMOS_VERSION


@register.filter
def status_label(value) -> str:
    return LABELS.get(str(value), str(value))


@register.simple_tag
def timestamp(value):
    """A moment as `<time>`: UTC on the server, put in the reader's time zone by aimos.js."""
    if value is None:
        return "—"
    return format_html(
        '<time datetime="{}" data-local>{} UTC</time>',
        value.isoformat(),
        value.strftime("%b %-d, %H:%M:%S"),
    )


@register.filter
def ago(value) -> str:
    """“just now” under a minute, else “5 minutes ago”."""
    from django.utils import timezone
    from django.utils.timesince import timesince

    if value is None:
        return "never"
    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value).split(', ')[0]} ago"


@register.filter
def elapsed(start, end) -> str:
    """How long from `start` to `end` (durations of builds)."""
    if start is None or end is None:
        return "—"
    return duration_ms(int((end - start).total_seconds() * 1000))
