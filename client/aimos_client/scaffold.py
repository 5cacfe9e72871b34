"""`aimos init`: the files of a new agent that runs as it is, locally and on the platform."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from aimos_client.errors import AimosError
from aimos_client.manifest import NAME_RE

TEMPLATES = ("sync", "stream")

MANIFEST = """\
# The agent's manifest; `aimos deploy` checks it before uploading, the platform again.
name: {name}
entrypoint: agent.main:handle     # module:function, called for every run
runtime: python3.11
requirements: requirements.txt    # installed when the platform builds a version
timeout: 30                       # seconds a run may take
resources: {{memory_mb: 256, cpus: 0.5, pids: 64}}
network: false                    # no network unless true and the server allows it
env: {{GREETING: Hello}}            # plain variables (no secrets here)
"""

SYNC_MAIN = '''\
"""{name}: returns a greeting (any JSON is a valid output).

`handle(payload, ctx)` is called for every run with the run's input. `ctx` is the agent SDK:
ctx.delta(text), ctx.tool_call(name, args) / ctx.tool_result(name, result, call_id=…),
ctx.log(message, level), ctx.checkpoint(state, label=…), ctx.state, ctx.emit(type, data).
`print()` becomes a log line.

Try it:  aimos dev run . --input '{{"name": "Ada"}}'
"""

import os


def handle(payload, ctx):
    name = payload.get("name", "world") if isinstance(payload, dict) else str(payload or "world")
    ctx.log(f"greeting {{name}}")
    call_id = ctx.tool_call("shout", {{"text": name}})
    shouted = name.upper()
    ctx.tool_result("shout", {{"text": shouted}}, call_id=call_id)
    greeting = f"{{os.environ.get('GREETING', 'Hello')}}, {{name}}!"
    ctx.delta(greeting)
    return {{"greeting": greeting, "shouted": shouted}}
'''

STREAM_MAIN = '''\
"""{name}: streams its answer word by word.

A generator handler: each `yield` of text is a `content_delta` event that clients see as it
happens; the run's output is all of it joined (or what the generator returns).

Try it:  aimos dev run . --input '{{"topic": "a lighthouse", "delay": 0.05}}'
"""

import os
import time


def handle(payload, ctx):
    options = payload if isinstance(payload, dict) else {{"topic": payload}}
    topic = str(options.get("topic") or "the sea")
    delay = float(options.get("delay", 0.05))
    greeting = os.environ.get("GREETING", "Hello")
    words = f"{{greeting}}! Here is a short note about {{topic}}.".split()
    ctx.log(f"streaming {{len(words)}} words about {{topic}}")
    for index, word in enumerate(words):
        yield word if index == len(words) - 1 else word + " "
        time.sleep(delay)
'''

REQUIREMENTS = """\
# Packages the agent needs, one per line (pip's format); the platform installs them when it
# builds a version. `aimos dev run` installs nothing: install them where you run it.
"""

AIMOSIGNORE = """\
# Left out of the package `aimos deploy` uploads (.gitignore's format; .gitignore counts too).
.env
*.log
tests/
"""


class InitError(AimosError):
    """The folder already holds an agent, or a name cannot be made."""


# Letters that Unicode does not decompose into a Latin letter and an accent.
_LATIN = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE", "ł": "l",
     "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ı": "i"}
)  # fmt: skip


def agent_name(text: str) -> str:
    """A valid agent name made from `text` (a folder name, usually): lowercase, accents
    dropped (`Über` → `uber`, `Straße` → `strasse`), every other run of characters a `-`;
    "" when nothing of `text` can be written so (e.g. `東京`)."""
    latin = unicodedata.normalize("NFKD", text.translate(_LATIN))
    latin = latin.encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9_-]+", "-", latin.lower()).strip("-_")[:64]


def init(folder: str | Path, *, name: str | None = None, template: str = "sync") -> list[Path]:
    """Write a new agent into `folder` (made if missing); the paths written. Refuses a
    folder that already has an aimos.yaml or agent/main.py."""
    if template not in TEMPLATES:
        raise InitError(f"unknown template {template!r} (one of {', '.join(TEMPLATES)})")
    root = Path(folder)
    if name is None:
        name = agent_name(root.resolve().name)
        if not name:
            raise InitError(
                f"cannot make an agent name of {root.resolve().name!r} (a name has lowercase "
                "letters a-z, digits, '-' and '_'): give one with --name"
            )
    if not NAME_RE.fullmatch(name):
        suggestion = agent_name(name)
        raise InitError(
            f"{name!r} is not a valid agent name: lowercase letters a-z, digits, '-' and '_', "
            "starting with a letter or digit, at most 64"
            + (f" (e.g. {suggestion!r})" if suggestion else "")
        )
    files = {
        "aimos.yaml": MANIFEST.format(name=name),
        "agent/__init__.py": "",
        "agent/main.py": (SYNC_MAIN if template == "sync" else STREAM_MAIN).format(name=name),
        "requirements.txt": REQUIREMENTS,
        ".aimosignore": AIMOSIGNORE,
    }
    existing = [
        path for path in ("aimos.yaml", "aimos.yml", "agent/main.py") if (root / path).exists()
    ]
    if existing:
        raise InitError(f"{root} already has {', '.join(existing)}; nothing was written")
    written = []
    for relative, text in files.items():
        path = root / relative
        if path.exists():
            continue  # e.g. a requirements.txt of the user's own
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
