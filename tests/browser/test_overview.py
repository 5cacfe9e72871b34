"""The overview in a real browser: status cards, the metrics chart, recent runs and the live
feed over /ws/events/; and the pages on a phone-sized screen."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from agents import services as agents
from aimos.models import MetricSample
from executions.tests.live import Client, deploy
from tests.browser.conftest import in_thread

pytestmark = pytest.mark.slow


def samples(hours: int = 6) -> None:
    """A day's shape of host samples, one a minute, as the workers would have taken them."""
    now = timezone.now()
    rows = []
    for minute in range(hours * 60, 0, -1):
        wave = (minute % 90) / 90
        rows.append(
            MetricSample(
                timestamp=now - timedelta(minutes=minute),
                cpu_usage=15 + 50 * wave * wave,
                memory_usage=38 + 10 * wave,
                disk_usage=57.0,
                network_io=3.0,
                active_agents_count=1,
                system_health_score=1.0,
            )
        )
    MetricSample.objects.bulk_create(rows)


def test_overview_shows_status_chart_recent_runs_and_the_live_feed(open_browser, live, owner, shot):
    samples()
    client = Client(live, owner)
    agent_id = deploy(client, "echo")
    run = client.post(f"/agents/{agent_id}/execute", json={"input": {"hi": 1}, "wait": 30}).json()

    page = open_browser(owner)
    expect(page.locator("#system-status")).to_have_text("healthy")
    expect(page.locator("#agents-total")).to_have_text("1")
    expect(page.locator("#recent-executions")).to_contain_text(run["id"][:8])
    page.click(".segmented >> text=6 h")
    expect(page.locator("#metrics-chart")).to_have_attribute("data-samples", "360")
    assert page.locator("svg polyline.series-cpu").count() >= 1

    expect(page.locator("#feed-state")).to_have_text("live")
    in_thread(agents.create_agent, owner, name="newcomer")  # the service tells the user's feed
    item = page.locator('#feed li[data-type="agent_created"]')
    expect(item).to_contain_text("Agent newcomer created")
    client.post(f"/agents/{agent_id}/execute", json={"input": {"hi": 2}, "wait": 30})
    expect(page.locator('#feed li[data-type="execution_completed"]')).to_contain_text("completed")
    expect(page.locator("#feed-empty")).to_be_hidden()
    shot(page, "overview")


def test_pages_fit_a_phone_screen(open_browser, live, owner, shot):
    samples(1)
    client = Client(live, owner)
    agent_id = deploy(client, "tools")
    run = client.post(
        f"/agents/{agent_id}/execute", json={"input": {"expression": "6 * 7"}, "wait": 30}
    ).json()
    page = open_browser(owner, width=390, height=844)
    for name, path in (
        ("phone-overview", "/"),
        ("phone-agents", "/agents/"),
        ("phone-agent", f"/agents/{agent_id}/"),
        ("phone-executions", "/executions/"),
        ("phone-execution", f"/executions/{run['id']}/"),
    ):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width}px wide on a 390px screen"
        tables = page.evaluate(
            "[...document.querySelectorAll('.table-wrap')]"
            ".filter(w => w.scrollWidth > w.clientWidth + 1)"
            ".map(w => w.scrollWidth + '>' + w.clientWidth)"
        )
        assert not tables, f"a table of {path} needs sideways scrolling: {tables}"
        shot(page, name)
    expect(page.locator(".t-call")).to_contain_text("calculator")
    expect(page.locator(".t-result")).to_contain_text("42")
