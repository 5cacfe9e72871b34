"""A property-based fuzzing pass over the OpenAPI schema, against the live server.

Schemathesis reads `/api/schema/` from a live stack (daphne, RQ workers, upkeep) and sends
generated requests, valid and invalid, to every operation with an API key of a real user.
Each answer must not be a server error, must have a documented status code and content type
and a body that matches the schema, and a request that matches the schema must not be
refused with a 400. Then the same checks are run on answers that random data cannot reach:
204s and the SSE stream of a real run.

Only the operations that revoke the fuzzer's own credentials are left out (logout, deleting
an API key). Webhooks: every URL the fuzzer sends is rewritten to a closed loopback port
before the request leaves, and every webhook row is checked to point there, so no delivery
can leave this machine.
"""

from collections import Counter
from unittest import SkipTest

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import FUZZ_REDIS_OFFSET, LiveStack, _stack_env
from executions.tests.live import Client, deploy, wait_for_status
from notifications.models import Webhook

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
]

# Port 9 (discard) on loopback: nothing listens there, so an attempt ends "connection refused".
LOOPBACK_WEBHOOK = "http://127.0.0.1:9/aimos-fuzz"

# Refusals of schema-valid data that no schema can express: they depend on the rows already
# there or on the clock, or on password rules. (operation, field) -> a part of the message.
BEYOND_THE_SCHEMA = {
    ("POST /api/v1/auth/register", "password"): "",
    ("POST /api/v1/auth/register", "username"): "already",
    ("POST /api/v1/auth/register", "email"): "already",
    ("POST /api/v1/api-keys", "expires_at"): "in the future",
    ("POST /api/v1/agents", "name"): "already",
    ("PUT /api/v1/agents/{id}", "name"): "already",
    ("PATCH /api/v1/agents/{id}", "name"): "already",
}

# Small enough for a 2-core CI machine (a few minutes in all), fixed for reproducible runs.
MAX_EXAMPLES = 12


class FuzzStack(LiveStack):
    def _wait_until_up(self) -> None:
        # A stack that does not come up is stopped: its processes must not outlive the test.
        try:
            super()._wait_until_up()
        except BaseException:
            self.stop()
            raise


@pytest.fixture(scope="module")
def fuzz_stack(django_db_setup, django_db_blocker):
    """A live stack where webhooks to private addresses are allowed, so that the fuzzer's
    webhooks (all rewritten to LOOPBACK_WEBHOOK) are accepted and never reach anywhere else."""
    env = _stack_env(
        FUZZ_REDIS_OFFSET, AIMOS_WEBHOOK_ALLOW_PRIVATE="1", AIMOS_WEBHOOK_RETRY_DELAYS="1"
    )
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    stack = FuzzStack(env)
    yield stack
    stack.stop()


@pytest.fixture
def fuzzer(fuzz_stack, transactional_db, django_user_model):
    """An HTTP client of the live server with an API key of a fresh user."""
    user = django_user_model.objects.create_user(
        username="fuzzer", email="fuzzer@example.com", password="correct-horse-battery"
    )
    return Client(fuzz_stack, user)


@pytest.fixture
def fuzz_schema(fuzz_stack, fuzzer):
    config = schemathesis.Config.from_dict(
        {
            "base-url": fuzz_stack.url,
            "headers": {"X-API-Key": fuzzer.headers["X-API-Key"]},
            "request-timeout": 30,
            # No NUL in generated strings: DRF refuses it in every text field, with a 400.
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "allow-x00": False,
            },
            "seed": 20261202,
        }
    )
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/api/schema/", config=config)
    # The fuzzer's own credentials stay valid for the whole pass.
    return schema.exclude(path="/api/v1/auth/logout").exclude(
        method="DELETE", path="/api/v1/api-keys/{id}"
    )


def only_loopback_webhooks(case) -> None:
    """Points any webhook URL in the request at LOOPBACK_WEBHOOK, before it is sent."""
    if case.operation.path.startswith("/api/v1/webhooks") and isinstance(case.body, dict):
        if "url" in case.body:
            case.body["url"] = LOOPBACK_WEBHOOK


def assert_every_webhook_is_loopback() -> None:
    elsewhere = list(Webhook.objects.exclude(url=LOOPBACK_WEBHOOK).values_list("url", flat=True))
    assert elsewhere == [], f"webhooks that could deliver off this machine: {elsewhere}"


def test_no_generated_request_gets_a_server_error_or_an_answer_off_the_schema(fuzz_schema, fuzzer):
    # Given every operation but the two that would revoke the fuzzer's own key
    statuses: Counter = Counter()
    failures: dict[tuple, str] = {}
    auth = {"X-API-Key": fuzzer.headers["X-API-Key"]}

    def fuzz_operation(operation, mode: GenerationMode) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case):
            only_loopback_webhooks(case)
            response = case.call(headers=auth)
            statuses[response.status_code // 100 * 100] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=auth)
            except FailureGroup as group:
                for failure in group.exceptions:
                    if beyond_the_schema(operation.label, failure, response):
                        continue
                    if refused_by_twisted(response):
                        continue
                    key = (operation.label, mode.value, failure.title, response.status_code)
                    failures.setdefault(key, _reproduction(case, response, failure))
            if operation.path.startswith("/api/v1/webhooks"):
                assert_every_webhook_is_loopback()

        try:
            send()
        except (Unsatisfiable, SkipTest):  # e.g. no way to make this operation's data invalid
            pass

    # When schemathesis sends valid and invalid requests to each of them
    operations = 0
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode)

    # Then no answer is a server error, off the schema, or a refusal of valid data
    summary = (
        f"{operations} operations, {sum(statuses.values())} requests, "
        f"answers by class {dict(sorted(statuses.items()))}, {len(failures)} distinct failures"
    )
    print(summary)
    assert failures == {}, summary + "\n\n" + "\n\n".join(failures.values())
    assert statuses[500] == 0, summary


def beyond_the_schema(label: str, failure, response) -> bool:
    """Whether this is a 400 for valid data whose every error is in BEYOND_THE_SCHEMA."""
    if failure.title != "Schema-valid request rejected" or response.status_code != 400:
        return False
    try:
        errors = response.json()["errors"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(errors) and all(
        (label, error.get("field")) in BEYOND_THE_SCHEMA
        and BEYOND_THE_SCHEMA[(label, error.get("field"))] in error.get("message", "")
        for error in errors
    )


def refused_by_twisted(response) -> bool:
    """Daphne's HTTP layer (Twisted) parses a multipart body itself and answers a bare 400, no
    headers and no body, when it cannot: e.g. a multipart body with no part at all. The request
    never reaches the application, so no code of ours can answer it as JSON."""
    request_type = response.request.headers.get("Content-Type", "")
    return (
        response.status_code == 400
        and request_type.startswith("multipart/form-data")
        and not response.content
        and not any(name.lower() == "content-type" for name in response.headers)
    )


def _reproduction(case, response, failure) -> str:
    request = response.request
    body = request.body[:300] if isinstance(request.body, str | bytes) else request.body
    return (
        f"{case.operation.label} -> {response.status_code}: {failure.title}\n"
        f"  {failure.message[:600]}\n"
        f"  request: {request.method} {request.url} body={body!r}\n"
        f"  answer: {response.text[:300]}"
    )


def test_real_objects_answer_as_the_schema_says_including_204_and_sse(
    fuzz_schema, fuzzer, fuzz_stack
):
    # Given a built agent, a finished run of it and a webhook (to loopback)
    agent_id = deploy(fuzzer, "echo")
    started = fuzzer.post(f"/agents/{agent_id}/execute", json={"input": {"text": "hi"}})
    assert started.status_code in (201, 202), started.text
    execution_id = started.json()["id"]
    wait_for_status(fuzzer, execution_id, {"completed", "failed"})
    hook = fuzzer.post("/webhooks", json={"url": LOOPBACK_WEBHOOK, "events": ["*"]})
    assert hook.status_code == 201, hook.text
    key = fuzzer.post("/api-keys", json={"name": "spare"})
    assert key.status_code == 201, key.text

    failures: list[str] = []

    def check(path, method, status, *, headers=None, query=None, **path_parameters):
        headers = {"X-API-Key": fuzzer.headers["X-API-Key"], **(headers or {})}
        case = fuzz_schema[path][method].Case(
            path_parameters=path_parameters, headers=headers, query=query
        )
        response = case.call()
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            failures.extend(
                f"{method} {path}: {failure.title}: {failure.message}"
                for failure in group.exceptions
            )
        if response.status_code != status:
            failures.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response

    v1 = "/api/v1"
    # When its JSON and SSE answers, and 204s, are checked against the schema
    check(f"{v1}/executions/{{id}}", "GET", 200, id=execution_id)
    check(f"{v1}/executions/{{id}}/events", "GET", 200, id=execution_id)
    sse = {"Accept": "text/event-stream"}
    stream = check(f"{v1}/executions/{{id}}/events", "GET", 200, headers=sse, id=execution_id)
    check(f"{v1}/executions/{{id}}/events", "GET", 200, query={"format": "sse"}, id=execution_id)
    check(f"{v1}/webhooks/{{id}}/deliveries", "GET", 200, id=hook.json()["id"])
    check(f"{v1}/webhooks/{{id}}", "DELETE", 204, id=hook.json()["id"])
    check(f"{v1}/api-keys/{{id}}", "DELETE", 204, id=key.json()["id"])
    check(f"{v1}/agents/{{id}}", "DELETE", 204, id=agent_id)

    # Then (beyond the checks) the stream ends with the run's terminal event
    kinds = [line[6:].strip() for line in stream.text.splitlines() if line.startswith("event:")]
    assert kinds and kinds[-1] in ("run_completed", "run_failed"), stream.text
    assert failures == [], "\n\n".join(failures)
    assert_every_webhook_is_loopback()
