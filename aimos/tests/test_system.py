"""System status, metrics samples, Prometheus metrics and request logging, on the real
PostgreSQL and Redis (and, for the cross-process checks, the live stack)."""

import logging
import re
import socket
import time
import uuid
from datetime import timedelta

import django_rq
import pytest
import requests
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from agents.choices import AgentStatus, VersionStatus
from agents.models import Agent, AgentVersion
from aimos.models import MetricSample
from aimos.system import take_sample
from aimos.upkeep import upkeep_pass
from executions.choices import ExecutionStatus
from executions.models import Execution

pytestmark = pytest.mark.django_db


# --- helpers --------------------------------------------------------------------------------


def make_agent(user, name: str, status=AgentStatus.READY) -> Agent:
    return Agent.objects.create(owner=user, name=name, status=status)


def make_version(agent: Agent, number: int = 1, status=VersionStatus.READY) -> AgentVersion:
    return AgentVersion.objects.create(
        agent=agent,
        number=number,
        status=status,
        artifact_sha256="0" * 64,
        artifact_size=1,
        entrypoint="agent.main:handle",
    )


def make_execution(version: AgentVersion, **fields) -> Execution:
    return Execution.objects.create(
        agent=version.agent,
        version=version,
        user=version.agent.owner,
        timeout_seconds=30,
        **fields,
    )


def make_sample(hours_ago: float) -> MetricSample:
    return MetricSample.objects.create(
        timestamp=timezone.now() - timedelta(hours=hours_ago),
        cpu_usage=10,
        memory_usage=20,
        disk_usage=30,
        network_io=1.5,
        active_agents_count=0,
        system_health_score=1,
    )


def enqueue_now(name: str, *args):
    """A job in the real queue at once (django_rq would wait for the test's transaction)."""
    return django_rq.get_queue(name, commit_mode="auto").enqueue(*args)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(text: str) -> dict:
    """Prometheus text parsed with prometheus_client: {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def family_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


# --- GET system/status -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/system/status", "/api/system/status"])
def test_status_reports_every_field_with_its_type(owner_api, settings, path):
    response = owner_api.get(path)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("healthy", "degraded", "unhealthy")
    assert isinstance(body["uptime_seconds"], int) and body["uptime_seconds"] >= 0
    assert body["version"] == settings.AIMOS_VERSION
    assert body["environment"] == settings.AIMOS_ENVIRONMENT
    assert body["total_agents"] == 0
    assert body["active_agents"] == 0
    assert 0 <= body["system_health_score"] <= 1
    assert body["last_execution"] is None
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"
    assert set(body["queues"]) == {"builds", "runs", "default"}
    assert all(isinstance(depth, int) for depth in body["queues"].values())
    assert body["workers"]["count"] == len(body["workers"]["names"])


def test_status_shows_the_queue_depths(owner_api, rq_queues):
    enqueue_now("builds", "builtins.print", "a")
    enqueue_now("builds", "builtins.print", "b")
    enqueue_now("runs", "builtins.print", "c")

    body = owner_api.get("/api/v1/system/status").json()

    assert body["queues"] == {"builds": 2, "runs": 1, "default": 0}
    for queue in rq_queues:
        queue.empty()


def test_status_counts_the_callers_agents_and_an_admin_sees_all(
    owner_api, other_api, admin_api, owner, other
):
    make_agent(owner, "ready-one")
    make_agent(owner, "draft-one", AgentStatus.DRAFT)
    make_agent(owner, "archived-one", AgentStatus.ARCHIVED)
    make_agent(other, "others-ready")

    mine = owner_api.get("/api/v1/system/status").json()
    theirs = other_api.get("/api/v1/system/status").json()
    everyone = admin_api.get("/api/v1/system/status").json()

    assert (mine["total_agents"], mine["active_agents"]) == (3, 1)
    assert (theirs["total_agents"], theirs["active_agents"]) == (1, 1)
    assert (everyone["total_agents"], everyone["active_agents"]) == (4, 2)


def test_last_execution_is_the_callers_newest(owner_api, other_api, admin_api, owner, other):
    version = make_version(make_agent(other, "others-agent"))
    older = timezone.now() - timedelta(hours=2)
    newest = timezone.now() - timedelta(minutes=5)
    make_execution(version, created_at=older)
    make_execution(version, created_at=newest)

    mine = owner_api.get("/api/v1/system/status").json()
    theirs = other_api.get("/api/v1/system/status").json()
    everyone = admin_api.get("/api/v1/system/status").json()

    assert mine["last_execution"] is None
    assert theirs["last_execution"] == newest.isoformat().replace("+00:00", "Z")
    assert everyone["last_execution"] == theirs["last_execution"]


@pytest.mark.parametrize(
    "path",
    ["/api/v1/system/status", "/api/v1/system/metrics", "/api/v1/system/metrics/prometheus"],
)
def test_system_endpoints_want_credentials(api, path):
    response = api.get(path)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_health_score_drops_and_status_is_unhealthy_when_redis_is_unreachable(owner_api, settings):
    up = owner_api.get("/api/v1/system/status").json()
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"

    down = owner_api.get("/api/v1/system/status").json()

    assert up["checks"]["redis"] == "ok"
    assert down["status"] == "unhealthy"
    assert down["checks"]["redis"].startswith("error")
    assert down["checks"]["database"] == "ok"
    assert down["system_health_score"] < up["system_health_score"]
    assert down["queues"] == {"builds": None, "runs": None, "default": None}
    assert down["workers"] == {"count": 0, "names": []}


def test_status_is_healthy_with_full_score_when_a_worker_is_alive(owner_api, rq_queues):
    worker = Worker(rq_queues, connection=rq_queues[0].connection, name=f"t-{uuid.uuid4().hex}")
    worker.register_birth()
    try:
        body = owner_api.get("/api/v1/system/status").json()
    finally:
        worker.register_death()

    assert body["status"] == "healthy"
    assert body["system_health_score"] == 1.0
    assert body["checks"]["workers"] == "ok"
    assert worker.name in body["workers"]["names"]


# --- GET system/metrics and the samples -----------------------------------------------------------


def test_metrics_returns_the_samples_of_the_last_hours_oldest_first(owner_api):
    recent = make_sample(hours_ago=1)
    yesterday = make_sample(hours_ago=30)
    make_sample(hours_ago=200)

    default = owner_api.get("/api/v1/system/metrics").json()
    two_days = owner_api.get("/api/v1/system/metrics", {"hours": 48}).json()
    month = owner_api.get("/api/system/metrics", {"hours": 720}).json()

    assert [s["timestamp"] for s in default] == [
        recent.timestamp.isoformat().replace("+00:00", "Z")
    ]
    assert set(default[0]) == {
        "timestamp",
        "cpu_usage",
        "memory_usage",
        "disk_usage",
        "network_io",
        "active_agents_count",
        "system_health_score",
    }
    assert [s["timestamp"] for s in two_days] == [
        yesterday.timestamp.isoformat().replace("+00:00", "Z"),
        recent.timestamp.isoformat().replace("+00:00", "Z"),
    ]
    assert len(month) == 3


@pytest.mark.parametrize("hours", ["0", "721", "-3", "abc", "1.5"])
def test_metrics_refuses_hours_outside_1_to_720(owner_api, hours):
    response = owner_api.get("/api/v1/system/metrics", {"hours": hours})

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert [error["field"] for error in body["errors"]] == ["hours"]


def test_take_sample_records_sane_values_of_this_host(owner_api, owner):
    make_agent(owner, "ready-one")
    make_agent(owner, "draft-one", AgentStatus.DRAFT)

    sample = take_sample()

    assert sample is not None
    stored = MetricSample.objects.get()
    assert stored.pk == sample.pk
    assert abs((timezone.now() - stored.timestamp).total_seconds()) < 30
    assert 0 <= stored.cpu_usage <= 100
    assert 0 < stored.memory_usage <= 100
    assert 0 < stored.disk_usage <= 100
    assert stored.network_io >= 0
    assert stored.active_agents_count == 1
    assert 0 < stored.system_health_score <= 1
    assert stored.host == socket.gethostname()
    listed = owner_api.get("/api/v1/system/metrics", {"hours": 1}).json()
    assert [s["cpu_usage"] for s in listed] == [stored.cpu_usage]


def test_take_sample_takes_one_sample_per_interval(settings):
    settings.AIMOS_METRICS_SAMPLE_SECONDS = 60

    first = take_sample()
    second = take_sample()
    settings.AIMOS_METRICS_SAMPLE_SECONDS = 0
    third = take_sample()

    assert first is not None
    assert second is None
    assert third is not None
    assert MetricSample.objects.count() == 2


def test_take_sample_deletes_samples_past_the_retention(settings):
    settings.AIMOS_METRICS_RETENTION_HOURS = 2
    expired = make_sample(hours_ago=3)
    kept = make_sample(hours_ago=1)

    sample = take_sample()

    assert set(MetricSample.objects.values_list("pk", flat=True)) == {kept.pk, sample.pk}
    assert not MetricSample.objects.filter(pk=expired.pk).exists()


def test_an_upkeep_pass_takes_a_sample():
    done = upkeep_pass()

    assert done["metrics_sample"] is True
    assert MetricSample.objects.count() == 1


# --- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_text_parses_and_counts_requests_by_route_template(owner_api):
    before = scrape(owner_api.get("/api/v1/system/metrics/prometheus").content.decode())
    missing = uuid.uuid4()

    owner_api.get("/api/v1/agents")
    owner_api.get("/api/v1/agents/")
    owner_api.get(f"/api/v1/agents/{missing}")
    response = owner_api.get("/api/v1/system/metrics/prometheus")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    after = scrape(text)
    listing = {"method": "GET", "endpoint": "/api/v1/agents", "status": "200"}
    detail = {"method": "GET", "endpoint": "/api/v1/agents/{pk}", "status": "404"}
    assert value(after, "aimos_requests_total", **listing) >= (
        value(before, "aimos_requests_total", **listing) + 2
    )
    assert value(after, "aimos_requests_total", **detail) >= (
        value(before, "aimos_requests_total", **detail) + 1
    )
    assert str(missing) not in text
    latency = {"method": "GET", "endpoint": "/api/v1/agents"}
    assert value(after, "aimos_request_duration_seconds_count", **latency) >= 2
    assert value(after, "aimos_request_duration_seconds_bucket", le="+Inf", **latency) == value(
        after, "aimos_request_duration_seconds_count", **latency
    )
    assert {
        "aimos_requests",
        "aimos_request_duration_seconds",
        "aimos_active_agents",
        "aimos_agents",
        "aimos_system_health_score",
        "aimos_health_check",
        "aimos_executions",
        "aimos_execution_duration_seconds",
        "aimos_active_runs",
        "aimos_queue_depth",
        "aimos_workers",
        "aimos_agent_versions",
        "aimos_info",
    } <= family_names(text)


def test_prometheus_reports_executions_versions_and_agents_from_the_database(
    owner_api, owner, rq_queues
):
    agent = make_agent(owner, "measured")
    version = make_version(agent)
    make_version(agent, number=2, status=VersionStatus.FAILED)
    make_execution(version, status=ExecutionStatus.COMPLETED, duration_ms=300)
    make_execution(version, status=ExecutionStatus.COMPLETED, duration_ms=5000)
    make_execution(version, status=ExecutionStatus.FAILED, duration_ms=50)
    make_execution(version, status=ExecutionStatus.RUNNING)
    make_execution(version, status=ExecutionStatus.PENDING)
    enqueue_now("runs", "builtins.print", "waiting")

    samples = scrape(owner_api.get("/api/v1/system/metrics/prometheus").content.decode())

    agent_id = str(agent.id)
    assert value(samples, "aimos_executions", status="completed", agent_id=agent_id) == 2
    assert value(samples, "aimos_executions", status="failed", agent_id=agent_id) == 1
    assert value(samples, "aimos_executions", status="running", agent_id=agent_id) == 1
    assert value(samples, "aimos_active_runs") == 2
    completed = {"status": "completed"}
    assert value(samples, "aimos_execution_duration_seconds_bucket", le="0.25", **completed) == 0
    assert value(samples, "aimos_execution_duration_seconds_bucket", le="0.5", **completed) == 1
    assert value(samples, "aimos_execution_duration_seconds_bucket", le="5.0", **completed) == 2
    assert value(samples, "aimos_execution_duration_seconds_count", **completed) == 2
    assert value(samples, "aimos_execution_duration_seconds_sum", **completed) == pytest.approx(5.3)
    assert value(samples, "aimos_agent_versions", status="ready") == 1
    assert value(samples, "aimos_agent_versions", status="failed") == 1
    assert value(samples, "aimos_active_agents") == 1
    assert value(samples, "aimos_agents", status="ready") == 1
    assert value(samples, "aimos_queue_depth", queue="runs") == 1
    assert value(samples, "aimos_health_check", check="database") == 1
    assert 0 < value(samples, "aimos_system_health_score") <= 1
    rq_queues[1].empty()


def test_metrics_scrape_is_open_when_no_token_is_set(api, settings):
    settings.AIMOS_METRICS_TOKEN = ""

    response = api.get("/metrics")

    assert response.status_code == 200
    assert "aimos_system_health_score" in family_names(response.content.decode())


def test_metrics_scrape_wants_the_token_when_one_is_set(api, settings):
    settings.AIMOS_METRICS_TOKEN = "scrape-token-1234"

    without = api.get("/metrics")
    wrong = api.get("/metrics", HTTP_AUTHORIZATION="Bearer another-token")
    right = api.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-1234")

    assert without.status_code == 401
    assert without["WWW-Authenticate"].startswith("Bearer")
    assert without.json()["code"] == "not_authenticated"
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "aimos_requests" in family_names(right.content.decode())


def test_the_api_path_wants_api_credentials_not_the_scrape_token(api, owner_api, settings):
    settings.AIMOS_METRICS_TOKEN = "scrape-token-1234"

    with_token = api.get(
        "/api/v1/system/metrics/prometheus", HTTP_AUTHORIZATION="Bearer scrape-token-1234"
    )
    with_account = owner_api.get("/api/v1/system/metrics/prometheus", HTTP_ACCEPT="text/plain")

    assert with_token.status_code == 401
    assert with_account.status_code == 200


def test_openmetrics_is_served_when_asked(api):
    response = api.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


def test_metrics_paths_stay_out_of_the_schema(api):
    paths = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]

    assert "/api/v1/system/metrics/prometheus" in paths
    assert "/metrics" not in paths
    assert not any(path.startswith("/api/system") for path in paths)


# --- X-Request-ID and the request log ---------------------------------------------------------


def test_a_sane_request_id_is_echoed_and_logged(owner_api, owner, caplog):
    caplog.set_level(logging.INFO, logger="aimos.request")

    response = owner_api.get("/api/v1/agents", HTTP_X_REQUEST_ID="trace-42.abc")

    assert response["X-Request-ID"] == "trace-42.abc"
    lines = [r.getMessage() for r in caplog.records if r.name == "aimos.request"]
    assert len(lines) == 1
    line = lines[0]
    assert "method=GET" in line
    assert "route=/api/v1/agents " in line
    assert "status=200" in line
    assert re.search(r"duration_ms=\d+(\.\d+)?", line)
    assert f"user={owner.pk}" in line
    assert "request_id=trace-42.abc" in line


@pytest.mark.parametrize("given", [None, "two words", "x" * 129, "new\nline", ""])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(api, given, caplog):
    caplog.set_level(logging.INFO, logger="aimos.request")
    headers = {} if given is None else {"HTTP_X_REQUEST_ID": given}

    first = api.get("/health", **headers)
    second = api.get("/health", **headers)

    assert re.fullmatch(r"[0-9a-f]{32}", first["X-Request-ID"])
    assert first["X-Request-ID"] != second["X-Request-ID"]
    line = next(r.getMessage() for r in caplog.records if r.name == "aimos.request")
    assert f"request_id={first['X-Request-ID']}" in line
    assert "user=-" in line


def test_an_unknown_page_is_logged_as_unmatched(api, caplog):
    caplog.set_level(logging.INFO, logger="aimos.request")

    response = api.get("/no-such-page", HTTP_X_REQUEST_ID="abc")

    assert response.status_code == 404
    assert response["X-Request-ID"] == "abc"
    line = next(r.getMessage() for r in caplog.records if r.name == "aimos.request")
    assert "route=unmatched" in line
    assert "status=404" in line


# --- across processes: the live stack -----------------------------------------------------------


@pytest.mark.slow
def test_live_metrics_count_runs_done_by_other_processes(live, owner):
    from executions.tests.live import Client, deploy

    client = Client(live, owner)
    agent_id = deploy(client, "echo")
    execute = {"method": "POST", "endpoint": "/api/v1/agents/{agent_pk}/execute", "status": "201"}
    completed = {"status": "completed", "agent_id": agent_id}
    before = scrape(requests.get(f"{live.url}/metrics", timeout=30).text)

    for payload in ({"n": 1}, {"n": 2}):
        response = client.post(f"/agents/{agent_id}/execute", json={"input": payload, "wait": 60})
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "completed"
    after = scrape(requests.get(f"{live.url}/metrics", timeout=30).text)

    assert value(before, "aimos_executions", **completed) == 0
    assert value(after, "aimos_executions", **completed) == 2
    assert value(after, "aimos_execution_duration_seconds_count", status="completed") == (
        value(before, "aimos_execution_duration_seconds_count", status="completed") + 2
    )
    assert value(after, "aimos_requests_total", **execute) >= (
        value(before, "aimos_requests_total", **execute) + 2
    )
    assert value(after, "aimos_workers") >= 1
    assert value(after, "aimos_agent_versions", status="ready") >= 1


@pytest.mark.slow
def test_live_workers_sample_metrics_and_the_status_is_healthy(live, owner):
    from executions.tests.live import Client

    client = Client(live, owner)
    deadline = time.monotonic() + 60
    samples = []
    while time.monotonic() < deadline and not samples:
        samples = client.get("/system/metrics", params={"hours": 1}).json()
        time.sleep(0.5)
    status = client.get("/system/status").json()

    assert samples, "no worker took a metrics sample within 60 s"
    assert 0 < samples[-1]["memory_usage"] <= 100
    assert status["status"] == "healthy"
    assert status["system_health_score"] == 1.0
    assert status["workers"]["count"] >= 1
