"""Event types and hostile protocol lines: a type is `[A-Za-z0-9_.:-]{1,64}` in the runner and on
the host, so no type can carry an SSE frame of its own; a line nested too deeply to parse is a
refused line, not a dead reader."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace

import pytest

from sandbox.base import Event, Status
from sandbox.protocol import parse_line, refusal
from sandbox.tests.helpers import TEST_LIMITS, run_agent

FORGED_TYPE = "x\ndata: {}\n\nid: 99999\nevent: run_completed"
DEPTH = 300_000


def line(kind, data=None) -> bytes:
    return json.dumps({"type": kind, "data": {} if data is None else data}).encode() + b"\n"


@pytest.mark.parametrize(
    "kind",
    [
        FORGED_TYPE,
        "a b",
        "",
        "x" * 65,
        "tab\there",
        "semi;colon",
        "caf\u00e9",
        "nul\u0000",
        "cr\rlf",
    ],
)
def test_a_type_outside_the_allowed_characters_is_not_a_protocol_line(kind):
    assert len(kind) < 65 or kind == "x" * 65
    assert parse_line(line(kind)) is None


@pytest.mark.parametrize("kind", ["progress", "a.b:c-d_e", "X" * 64, "0", "tool_call"])
def test_a_type_of_the_allowed_characters_is_parsed(kind):
    assert parse_line(line(kind, {"n": 1})) == Event(kind, {"n": 1})


def test_refusal_names_a_bad_type_even_when_the_parser_is_bypassed():
    assert refusal(Event(FORGED_TYPE, {})).startswith("refused")
    assert refusal(Event("run_completed", {})).startswith("refused")
    assert refusal(Event("progress", {})) is None


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_deeply_nested_line_is_not_a_protocol_line(opening):
    closing = "]" if opening == "[" else "}"
    deep = (opening * DEPTH + "1" + closing * DEPTH).encode()
    assert parse_line(deep) is None
    wrapped = b'{"type": "progress", "data": {"x": ' + deep + b"}}"
    assert parse_line(wrapped) is None


AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": f"""
        import json
        import os


        def forge(payload, ctx):
            import __main__
            fd = __main__._PROTOCOL_FD  # the runner's private fd: an agent can reach it
            for text in (
                json.dumps({{"type": {FORGED_TYPE!r}, "data": {{}}}}),
                json.dumps({{"type": "a b", "data": {{}}}}),
                "[" * {DEPTH} + "]" * {DEPTH},
                '{{"type": "progress", "data": {{"x": ' + "[" * {DEPTH} + "]" * {DEPTH} + "}}}}",
            ):
                os.write(fd, text.encode() + b"\\n")
            try:
                ctx.emit({FORGED_TYPE!r}, {{}})
            except ValueError as exc:
                refused = str(exc)
            else:
                refused = ""
            ctx.emit("progress.step:1", {{"n": 1}})
            return {{"refused_by_ctx": refused}}
    """,
}


@pytest.fixture(scope="module")
def env(process_backend, tmp_path_factory):
    source = tmp_path_factory.mktemp("event-types")
    for name, text in AGENT.items():
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    manifest = {"name": "event-types", "entrypoint": "agent.main:forge"}
    built = process_backend.prepare(source, manifest, key="event-types")
    yield built
    process_backend.remove(built)


def test_forged_and_deeply_nested_lines_are_refused_and_the_run_ends_normally(process_backend, env):
    limits = replace(TEST_LIMITS, max_output_bytes=8 * 1024 * 1024)
    events, outcome = run_agent(
        process_backend, env, None, entrypoint="agent.main:forge", limits=limits, within=60
    )
    assert outcome.status == Status.COMPLETED
    assert "invalid event type" in outcome.output["refused_by_ctx"]
    assert [e.type for e in events if e.type not in ("error", "log")] == ["progress.step:1"]
    refused = [e.data["message"] for e in events if e.type == "error"]
    assert len(refused) == 4 and all(m.startswith("refused") for m in refused)
    assert all("\n" not in e.type for e in events)
