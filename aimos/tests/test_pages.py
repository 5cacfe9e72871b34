"""The dashboard's overview, its static files, and what every page shares (login, 404)."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents import services as agents
from aimos.models import MetricSample
from executions.models import Execution

pytestmark = pytest.mark.django_db


@pytest.fixture
def page(client, owner):
    client.force_login(owner)
    return client


def sample(minutes_ago: float, cpu: float, memory: float = 40.0) -> MetricSample:
    return MetricSample.objects.create(
        timestamp=timezone.now() - timedelta(minutes=minutes_ago),
        cpu_usage=cpu,
        memory_usage=memory,
        disk_usage=50.0,
        network_io=1.0,
        active_agents_count=0,
        system_health_score=1.0,
    )


def test_overview_wants_a_login(client):
    response = client.get(reverse("overview"))
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/"


def test_overview_shows_status_cards_and_the_users_numbers(page, owner, other):
    agents.create_agent(owner, name="mine")
    agents.create_agent(other, name="theirs")
    body = page.get(reverse("overview")).content.decode()
    assert 'id="system-status"' in body
    assert '<p class="stat-value" id="agents-total">1</p>' in body
    assert 'data-url="/ws/events/"' in body
    assert "No runs yet." in body


def test_overview_draws_the_metrics_of_the_chosen_range(page):
    for minutes, cpu in ((32, 10.0), (31, 20.0), (30, 90.0), (3 * 60, 55.0)):
        sample(minutes, cpu)
    hour = page.get(reverse("overview"), {"hours": 1}).content.decode()
    assert 'data-samples="3"' in hour
    assert hour.count('class="series series-cpu"') == 1
    assert "y2=" in hour and 'points="' in hour
    # 90 % CPU is drawn at a tenth of the height (200 - 180) from the top.
    assert ",20.0" in hour
    assert '<strong id="last-cpu_usage">90.0%</strong>' in hour
    assert 'aria-current="true">1 h</a>' in hour

    day = page.get(reverse("overview"), {"hours": 24}).content.decode()
    assert 'data-samples="4"' in day
    # The three-hour gap between the samples breaks the line rather than joining it.
    assert day.count('class="series series-cpu"') == 2


def test_overview_without_samples_says_so(page):
    body = page.get(reverse("overview"), {"hours": "nonsense"}).content.decode()
    assert "No samples in this range yet." in body
    assert 'aria-current="true">24 h</a>' in body


@pytest.mark.django_db(transaction=True)
def test_overview_lists_the_users_recent_runs_only(page, owner, other, drain_queues):
    from executions.services import start_execution
    from executions.tests.runs import deploy

    mine = start_execution(owner, deploy(owner, "echo", drain_queues), enqueue=False)
    theirs = start_execution(
        other, deploy(other, "echo", drain_queues, name="theirs"), enqueue=False
    )
    body = page.get(reverse("overview")).content.decode()
    assert f'href="/executions/{mine.pk}/"' in body
    assert f"/executions/{theirs.pk}/" not in body
    assert Execution.objects.count() == 2


def test_static_files_are_served_without_a_build_step(client):
    for path in ("css/aimos.css", "js/aimos.js", "js/execution.js", "img/logo.svg"):
        response = client.get(f"/static/{path}")
        assert response.status_code == 200, path
        content = b"".join(response.streaming_content)
        assert len(content) > 100


def test_an_unknown_page_is_the_dashboards_404(page):
    response = page.get("/no-such-page/")
    assert response.status_code == 404
    assert "There is nothing here, or it is not yours to see." in response.content.decode()
    assert response["Content-Type"].startswith("text/html")


def test_the_api_keeps_json_404s(page):
    response = page.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_template_helpers_say_durations_like_people_do():
    from aimos.templatetags.aimos import duration_ms, uptime

    assert [uptime(s) for s in (45, 720, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "45 s",
        "12 min",
        "3 h 05 min",
        "2 d 4 h",
    ]
    assert [duration_ms(ms) for ms in (850, 12_345, 245_000, None)] == [
        "850 ms",
        "12.3 s",
        "4 min 05 s",
        "—",
    ]
