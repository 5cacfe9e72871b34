"""Every example agent run end to end: `POST agents/{id}/execute`, a real worker, the record."""

import pytest

from executions.tests.runs import API, deploy, events, execute

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True, params=["process", "docker"])
def sandbox_backend(request, settings):
    """Each example is built and run on both sandbox backends."""
    settings.AIMOS_SANDBOX = request.param
    return request.param


def run_to_the_end(client, drain, agent, **body) -> dict:
    response = execute(client, agent.pk, **body)
    assert response.status_code == 202, response.content
    drain()
    return client.get(f"{API}/executions/{response.json()['id']}").json()


def test_echo_returns_its_input(owner, owner_api, drain_queues):
    agent = deploy(owner, "echo", drain_queues)
    payload = {"text": "hello", "numbers": [1, 2, 3]}

    response = execute(owner_api, agent.pk, input=payload)
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    drain_queues()

    run = owner_api.get(f"{API}/executions/{response.json()['id']}").json()
    assert run["status"] == "completed"
    assert run["output"] == payload
    assert run["input"] == payload
    assert run["version"] == "v1"
    assert run["agent_name"] == "echo"
    assert run["finished_at"] is not None and run["duration_ms"] is not None


def test_story_streams_deltas_that_join_into_its_output(owner, owner_api, drain_queues):
    agent = deploy(owner, "story", drain_queues)

    run = run_to_the_end(owner_api, drain_queues, agent, input={"topic": "a moth", "delay": 0})

    assert run["status"] == "completed"
    stream = events(owner_api, run["id"])
    deltas = [event["data"]["content"] for event in stream if event["type"] == "content_delta"]
    assert len(deltas) > 10
    assert "".join(deltas) == run["output"]
    assert "a moth" in run["output"]
    assert [event["seq"] for event in stream] == list(range(1, len(stream) + 1))
    assert stream[0]["type"] == "run_started" and stream[-1]["type"] == "run_completed"
    assert run["events"] == len(stream)


def test_story_log_line_is_in_the_run_logs(owner, owner_api, drain_queues):
    agent = deploy(owner, "story", drain_queues)
    run = run_to_the_end(owner_api, drain_queues, agent, input={"topic": "a moth", "delay": 0})

    response = owner_api.get(f"{API}/executions/{run['id']}/logs")

    assert response.status_code == 200
    entries = response.json()
    assert response["X-Total-Count"] == str(len(entries))
    told = [entry for entry in entries if entry["message"] == "telling a story about a moth"]
    assert len(told) == 1
    assert told[0]["level"] == "INFO"
    assert told[0]["source"] == "agent"
    assert told[0]["timestamp"]
    seq = told[0]["metadata"]["seq"]
    assert events(owner_api, run["id"], after=seq - 1, limit=1)[0]["type"] == "log"


def test_tools_emits_a_tool_call_and_its_result_with_one_call_id(owner, owner_api, drain_queues):
    agent = deploy(owner, "tools", drain_queues)

    run = run_to_the_end(owner_api, drain_queues, agent, input={"expression": "2 + 3 * 4"})

    assert run["status"] == "completed"
    assert run["output"] == {"expression": "2 + 3 * 4", "value": 14}
    stream = events(owner_api, run["id"])
    calls = [event["data"] for event in stream if event["type"] == "tool_call"]
    results = [event["data"] for event in stream if event["type"] == "tool_result"]
    assert len(calls) == 1 and len(results) == 1
    assert calls[0]["call_id"] and calls[0]["call_id"] == results[0]["call_id"]
    assert calls[0]["name"] == results[0]["name"] == "calculator"
    assert calls[0]["args"] == {"expression": "2 + 3 * 4"}
    assert results[0]["result"] == {"value": 14}


def test_counter_stores_a_checkpoint_per_step(owner, owner_api, drain_queues):
    agent = deploy(owner, "counter", drain_queues)

    run = run_to_the_end(owner_api, drain_queues, agent, input={"to": 3, "delay": 0})

    assert run["output"] == {"count": 3, "resumed_from": None, "steps": [1, 2, 3]}
    checkpoints = owner_api.get(f"{API}/executions/{run['id']}/checkpoints").json()
    assert [c["label"] for c in checkpoints] == ["step 1", "step 2", "step 3"]
    assert all(c["execution_id"] == run["id"] for c in checkpoints)
    detail = owner_api.get(f"{API}/checkpoints/{checkpoints[1]['id']}").json()
    assert detail["state"] == {"count": 2, "steps": [1, 2]}
    marks = [event for event in events(owner_api, run["id"]) if event["type"] == "checkpoint"]
    assert [m["data"]["checkpoint_id"] for m in marks] == [c["id"] for c in checkpoints]
    assert [m["seq"] for m in marks] == [c["seq"] for c in checkpoints]


def test_broken_fails_with_the_traceback(owner, owner_api, drain_queues):
    agent = deploy(owner, "broken", drain_queues)

    run = run_to_the_end(owner_api, drain_queues, agent, input="boom")

    assert run["status"] == "failed"
    assert run["error_type"] == "exception"
    raised = "RuntimeError: broken on purpose (input: 'boom')"
    assert run["error_message"].strip().splitlines()[-1] == raised
    assert run["output"] is None
    logs = owner_api.get(f"{API}/executions/{run['id']}/logs").json()
    tracebacks = [
        entry for entry in logs if "Traceback (most recent call last)" in entry["message"]
    ]
    assert len(tracebacks) == 1
    assert tracebacks[0]["level"] == "ERROR"
    assert raised in tracebacks[0]["message"]
    assert "main.py" in tracebacks[0]["message"]
    last = events(owner_api, run["id"])[-1]
    assert last["type"] == "run_failed"
    assert last["data"]["error_type"] == "exception"


def test_slow_with_a_one_second_timeout_times_out(owner, owner_api, drain_queues):
    agent = deploy(owner, "slow", drain_queues)

    run = run_to_the_end(
        owner_api,
        drain_queues,
        agent,
        input={"seconds": 30, "interval": 0.1},
        timeout_seconds=1,
    )

    assert run["status"] == "timed_out"
    assert run["timeout_seconds"] == 1
    assert run["error_type"] == ""
    last = events(owner_api, run["id"])[-1]
    assert last["type"] == "run_timed_out"
    assert last["data"]["reason"]


def test_events_page_with_after_and_limit(owner, owner_api, drain_queues):
    agent = deploy(owner, "counter", drain_queues)
    run = run_to_the_end(owner_api, drain_queues, agent, input={"to": 3, "delay": 0})
    everything = events(owner_api, run["id"])

    page = events(owner_api, run["id"], after=2, limit=3)

    assert [event["seq"] for event in page] == [3, 4, 5]
    assert page == everything[2:5]
    assert set(page[0]) == {"seq", "type", "data", "timestamp", "execution_id"}
    assert page[0]["execution_id"] == run["id"]
    assert events(owner_api, run["id"], after=len(everything)) == []
    last_event_id = owner_api.get(
        f"{API}/executions/{run['id']}/events", HTTP_LAST_EVENT_ID=str(len(everything) - 1)
    ).json()
    assert [event["type"] for event in last_event_id] == ["run_completed"]


@pytest.mark.parametrize("params", [{"after": "x"}, {"after": -1}, {"limit": 0}])
def test_bad_event_paging_is_a_400(owner, owner_api, drain_queues, params):
    agent = deploy(owner, "echo", drain_queues)
    run = execute(owner_api, agent.pk).json()

    response = owner_api.get(f"{API}/executions/{run['id']}/events", params)

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] in params
