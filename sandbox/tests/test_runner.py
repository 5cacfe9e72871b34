"""The in-sandbox runner, driven through each real backend: handler styles, ctx, logs, errors."""

from __future__ import annotations

import pytest

from sandbox.base import ErrorType, Status
from sandbox.tests.helpers import log_messages, run_agent

AGENT = {
    "agent/__init__.py": "",
    "agent/main.py": """
        import asyncio
        import os
        import sys

        print("imported")


        def handle(payload):
            return {"echo": payload}


        def with_ctx(payload, ctx):
            ctx.delta("a")
            call_id = ctx.tool_call("search", {"q": payload})
            ctx.tool_result("search", ["r1"])
            ctx.log("thinking", level="warning")
            ctx.checkpoint({"step": 1}, label="first")
            ctx.emit("progress", {"pct": 50})
            refused = []
            for kind in ("result", "run_completed", "log"):
                try:
                    ctx.emit(kind, {})
                except ValueError:
                    refused.append(kind)
            try:
                ctx.checkpoint({1, 2})
            except TypeError as exc:
                refused.append(str(exc))
            return {"state": ctx.state, "call_id": call_id, "refused": refused}


        async def handle_async(payload):
            await asyncio.sleep(0.01)
            return payload * 2


        def generate(payload):
            yield "Hel"
            yield "lo"
            yield None
            yield {"n": 1}


        def generate_returning(payload):
            yield "x"
            return "final"


        async def generate_async(payload, ctx):
            for word in ("a", "b", "c"):
                await asyncio.sleep(0)
                yield word


        def chatty(payload):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            print('{"type": "result", "data": {"output": "forged"}}')
            sys.stdout.write('{"type": "error", "data": {"message": "forged"}}\\n')
            os.system("echo from a subprocess")
            return "real"


        def forge(payload):
            import __main__
            fd = __main__._PROTOCOL_FD  # the runner's private fd: an agent can reach it
            for line in (
                '{"type": "log", "data": {"level": "info", "message": "hi", "source": "platform"}}',
                '{"type": "run_completed", "data": {}}',
                '{"type": "content_delta", "data": {"content": 5}}',
                "not json at all",
            ):
                os.write(fd, line.encode() + b"\\n")
            return "done"


        def not_json(payload):
            return {"when": object()}


        def boom(payload):
            raise ValueError("boom")


        def exits(payload):
            sys.exit(3)


        NOT_CALLABLE = 42
    """,
    "broken/__init__.py": "",
    "broken/main.py": "import does_not_exist_anywhere\n",
}


@pytest.fixture(scope="module")
def env(make_agent):
    return make_agent(AGENT)


def test_sync_handler_returns_output(backend, env):
    events, outcome = run_agent(backend, env, {"a": 1})
    assert outcome.status == Status.COMPLETED
    assert outcome.output == {"echo": {"a": 1}}
    assert outcome.error_type is None
    assert outcome.duration_ms > 0


def test_import_time_print_is_a_log_event(backend, env):
    events, _ = run_agent(backend, env, 1)
    assert "imported" in log_messages(events, "stdout")


def test_ctx_api_sends_each_kind_of_event(backend, env):
    events, outcome = run_agent(backend, env, "q", entrypoint="agent.main:with_ctx", state=[7])
    assert outcome.status == Status.COMPLETED, outcome
    kinds = [e.type for e in events if e.type != "log"]
    assert kinds == ["content_delta", "tool_call", "tool_result", "checkpoint", "progress"]
    by_type = {e.type: e.data for e in events}
    assert by_type["content_delta"] == {"content": "a"}
    assert by_type["tool_call"] == {"call_id": "call_1", "name": "search", "args": {"q": "q"}}
    assert by_type["tool_result"] == {"call_id": "call_1", "name": "search", "result": ["r1"]}
    assert by_type["checkpoint"] == {"state": {"step": 1}, "label": "first"}
    assert by_type["progress"] == {"pct": 50}
    assert {"level": "warning", "message": "thinking", "source": "agent"} in [
        e.data for e in events if e.type == "log"
    ]
    assert outcome.output["state"] == [7]
    assert outcome.output["call_id"] == "call_1"
    refused = outcome.output["refused"]
    assert refused[:3] == ["result", "run_completed", "log"]
    assert "must be JSON-serialisable" in refused[3]


def test_async_handler(backend, env):
    _, outcome = run_agent(backend, env, 21, entrypoint="agent.main:handle_async")
    assert (outcome.status, outcome.output) == (Status.COMPLETED, 42)


def test_generator_yields_become_deltas_and_output_is_their_text(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:generate")
    deltas = [e.data["content"] for e in events if e.type == "content_delta"]
    assert deltas == ["Hel", "lo", '{"n": 1}']
    assert outcome.output == 'Hello{"n": 1}'


def test_generator_return_value_is_the_output(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:generate_returning")
    assert [e.data["content"] for e in events if e.type == "content_delta"] == ["x"]
    assert outcome.output == "final"


def test_async_generator_with_ctx(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:generate_async")
    assert [e.data["content"] for e in events if e.type == "content_delta"] == ["a", "b", "c"]
    assert outcome.output == "abc"


def test_prints_are_logs_and_cannot_forge_protocol_events(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:chatty")
    assert outcome.status == Status.COMPLETED
    assert outcome.output == "real"
    stdout = log_messages(events, "stdout")
    assert "to stdout" in stdout
    assert '{"type": "result", "data": {"output": "forged"}}' in stdout
    assert '{"type": "error", "data": {"message": "forged"}}' in stdout
    assert "from a subprocess" in stdout
    assert "to stderr" in log_messages(events, "stderr")
    assert [e for e in events if e.data.get("source") == "stderr"][0].data["level"] == "error"
    assert not [e for e in events if e.type in ("result", "error")]


def test_events_written_straight_to_the_protocol_fd_are_checked(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:forge")
    assert (outcome.status, outcome.output) == (Status.COMPLETED, "done")
    assert not [e for e in events if e.type.startswith("run_")]
    assert not [e for e in events if e.type == "log" and e.data["source"] == "platform"]
    assert not [e for e in events if e.type == "content_delta"]
    refused = [e.data["message"] for e in events if e.type == "error"]
    assert len(refused) == 4 and all(m.startswith("refused") for m in refused)


def test_a_return_value_that_is_not_json_fails_clearly(backend, env):
    _, outcome = run_agent(backend, env, None, entrypoint="agent.main:not_json")
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.EXCEPTION
    assert "must be JSON-serialisable" in outcome.error


def test_an_exception_fails_the_run_with_its_traceback(backend, env):
    events, outcome = run_agent(backend, env, None, entrypoint="agent.main:boom")
    assert outcome.status == Status.FAILED
    assert outcome.error_type == ErrorType.EXCEPTION
    assert outcome.error == "ValueError: boom"
    tracebacks = [m for m in log_messages(events, "agent") if m.startswith("Traceback")]
    assert tracebacks and 'raise ValueError("boom")' in tracebacks[0]


def test_sys_exit_is_a_failure(backend, env):
    _, outcome = run_agent(backend, env, None, entrypoint="agent.main:exits")
    assert outcome.status == Status.FAILED
    assert "sys.exit(3)" in outcome.error


def test_unknown_function_fails_the_run(backend, env):
    _, outcome = run_agent(backend, env, None, entrypoint="agent.main:nowhere")
    assert outcome.status == Status.FAILED
    assert "nowhere" in outcome.error


def test_inspect_callable(backend, env):
    inspection = backend.inspect(env, "agent.main:with_ctx")
    assert inspection.ok and inspection.callable
    assert inspection.signature == "(payload, ctx)"


def test_inspect_not_callable(backend, env):
    inspection = backend.inspect(env, "agent.main:NOT_CALLABLE")
    assert not inspection.ok and not inspection.callable
    assert "not callable" in inspection.error


def test_inspect_missing_attribute(backend, env):
    inspection = backend.inspect(env, "agent.main:missing")
    assert not inspection.ok
    assert "AttributeError" in inspection.error


def test_inspect_import_error(backend, env):
    inspection = backend.inspect(env, "broken.main:handle")
    assert not inspection.ok
    assert "ModuleNotFoundError" in inspection.error
    assert "does_not_exist_anywhere" in inspection.traceback


def test_inspect_bad_entrypoint_format(backend, env):
    inspection = backend.inspect(env, "agent.main")
    assert not inspection.ok
    assert "package.module:function" in inspection.error
