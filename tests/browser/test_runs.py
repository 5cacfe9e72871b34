"""Agents and runs in a real browser against the live stack: create an agent, upload the story
example with the progress bar, watch it build, run it and see the text stream in while the run
is still going; pause, resume and cancel a slow run; restore a run from a checkpoint."""

import json
import time

import pytest
from playwright.sync_api import expect

from agents.models import Agent
from agents.tests.packages import example_files, pack_files
from executions.models import Execution
from executions.tests.live import Client, deploy

pytestmark = pytest.mark.slow

BUILD_TIMEOUT_MS = 120_000
RUN_TIMEOUT_MS = 90_000


def execution_of(page) -> Execution:
    """The execution whose page is open."""
    return Execution.objects.get(pk=page.locator("#execution").get_attribute("data-id"))


def db_status(execution_id, wanted: str, timeout: float = 15) -> str:
    """The status in the database once it is `wanted` (or what it is after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        status = Execution.objects.values_list("status", flat=True).get(pk=execution_id)
        if status == wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def run_from_agent_page(page, agent_id: str, payload: str) -> None:
    page.goto(f"/agents/{agent_id}/")
    page.fill("#id_input", payload)
    page.click("#run-button")
    expect(page.locator("#execution")).to_be_visible()


def test_upload_build_run_and_watch_the_story_stream(open_browser, owner, tmp_path, shot):
    page = open_browser(owner)

    # A new agent, from the form.
    page.click("nav >> text=Agents")
    expect(page.locator("h2", has_text="No agents yet")).to_be_visible()
    page.click("text=New agent")
    page.fill("#id_name", "story")
    page.fill("#id_description", "Tells a short story, word by word.")
    page.fill("#id_tags", "demo, stream")
    shot(page, "agent-new")
    page.click("text=Create agent")
    expect(page.locator(".message-success")).to_contain_text("Agent story created")
    expect(page.locator("#agent-status")).to_have_text("draft")
    agent = Agent.objects.get(owner=owner, name="story")
    assert agent.tags == ["demo", "stream"]

    # Upload through the API with the session cookie and CSRF header, showing the progress.
    package = tmp_path / "story.tar.gz"
    package.write_bytes(pack_files(example_files("story")))
    page.set_input_files("#id_file", str(package))
    with page.expect_response(
        lambda r: (
            r.url.endswith(f"/api/v1/agents/{agent.pk}/versions") and r.request.method == "POST"
        )
    ) as answer:
        page.click("#upload-button")
    assert answer.value.status == 201
    assert answer.value.request.header_value("x-csrftoken")

    # The build is followed live until the version is ready.
    version = page.locator("#version-1")
    expect(version).to_be_visible()
    expect(version.locator(".badge")).to_have_text("ready", timeout=BUILD_TIMEOUT_MS)
    expect(version.locator("[data-log]")).to_contain_text("Build succeeded")
    expect(page.locator("#agent-status")).to_have_text("ready")
    expect(page.locator("#run-form")).to_be_visible()  # the page reloaded with the build done
    expect(page.locator(".tag-current")).to_be_visible()
    shot(page, "agent-ready")

    # JSON is checked in the browser before anything is sent.
    page.fill("#id_input", '{"topic": ')
    expect(page.locator("#input-error")).to_contain_text("Not valid JSON")
    page.click("#run-button")
    expect(page.locator("h1")).to_contain_text("story")  # still the agent page
    assert not Execution.objects.exists()
    shot(page, "agent-run-invalid-json")

    # A slow story: the text shows while the run is still going.
    page.fill("#id_input", '{"topic": "a heron", "delay": 0.2}')
    expect(page.locator("#input-error")).to_be_hidden()
    page.click("#run-button")
    expect(page.locator("#execution")).to_be_visible()
    execution = execution_of(page)
    text = page.locator("#transcript .t-text")
    expect(text).to_contain_text("Once upon a time there was a heron", timeout=RUN_TIMEOUT_MS)
    partial = text.inner_text()
    assert Execution.objects.get(pk=execution.pk).status == "running"
    assert "And that was enough." not in partial
    expect(page.locator("#execution-status")).to_have_text("running")
    expect(page.locator("#stream-state")).to_have_text("live")
    shot(page, "execution-streaming")

    # Then it ends: the whole text, the output and the status agree with the database.
    expect(page.locator("#execution-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(text).to_contain_text("And that was enough.")
    expect(page.locator("#output-card")).to_be_visible()
    execution.refresh_from_db()
    assert execution.status == "completed"
    assert text.inner_text() == execution.output
    assert page.locator("#transcript .t-text").count() == 1
    expect(page.locator("#pause-button")).to_be_hidden()
    expect(page.locator("#cancel-button")).to_be_hidden()
    expect(page.locator(".t-log")).to_contain_text("telling a story about a heron")
    expect(page.locator("#stream-state")).to_have_text("finished")
    shot(page, "execution-completed")

    # A reload renders the same run from the database.
    page.reload()
    expect(page.locator("#transcript .t-text")).to_have_text(execution.output)
    expect(page.locator("#execution-status")).to_have_text("completed")

    # "Run again" opens the run form with this run's input.
    page.click("text=Run again")
    expect(page.locator("#run-form")).to_be_visible()
    assert json.loads(page.locator("#id_input").input_value()) == execution.input

    # The lists show it.
    page.click("nav >> text=Agents")
    row = page.locator('tr[data-agent="story"]')
    expect(row.locator(".badge")).to_have_text("ready")
    expect(row.locator(".rate-value")).to_have_text("100%")
    shot(page, "agents-list")
    page.click("nav >> text=Executions")
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    expect(page.locator("#executions .badge")).to_have_text("completed")
    shot(page, "executions-list")
    page.select_option("#status", "failed")  # a filter applies as soon as it changes
    expect(page.locator("text=No execution matches these filters.")).to_be_visible()
    assert "status=failed" in page.url


def test_pause_resume_and_cancel_a_slow_run(open_browser, live, owner, shot):
    agent_id = deploy(Client(live, owner), "slow")
    page = open_browser(owner)
    run_from_agent_page(page, agent_id, '{"seconds": 120, "interval": 0.3}')
    execution = execution_of(page)
    badge = page.locator("#execution-status")
    text = page.locator("#transcript")  # the pause line splits the text into two blocks
    expect(text).to_contain_text("tick 2", timeout=RUN_TIMEOUT_MS)
    expect(badge).to_have_text("running")

    page.click("#pause-button")
    expect(badge).to_have_text("paused")
    assert db_status(execution.pk, "paused") == "paused"
    expect(page.locator("#resume-button")).to_be_visible()
    expect(page.locator("#pause-button")).to_be_hidden()
    expect(page.locator(".t-status", has_text="Paused")).to_be_visible()
    shot(page, "execution-paused")

    ticks = text.inner_text().count("tick")
    page.click("#resume-button")
    expect(badge).to_have_text("running")
    assert db_status(execution.pk, "running") == "running"
    expect(page.locator(".t-status", has_text="Resumed")).to_be_visible()
    expect(text).to_contain_text(f"tick {ticks + 2}")  # it goes on after the resume

    page.click("#cancel-button")  # its confirm() is accepted
    expect(badge).to_have_text("cancelled")
    assert db_status(execution.pk, "cancelled") == "cancelled"
    expect(page.locator(".t-final")).to_contain_text("Cancelled")
    expect(page.locator("#controls form[data-control]:visible")).to_have_count(0)
    shot(page, "execution-cancelled")


def test_restore_a_run_from_a_checkpoint(open_browser, live, owner, shot):
    client = Client(live, owner)
    agent_id = deploy(client, "counter")
    source = client.post(
        f"/agents/{agent_id}/execute", json={"input": {"to": 3, "delay": 0.05}, "wait": 60}
    ).json()
    assert source["status"] == "completed"

    page = open_browser(owner)
    page.goto(f"/executions/{source['id']}/")
    checkpoints = page.locator("#checkpoints .checkpoint")
    expect(checkpoints).to_have_count(3)
    second = checkpoints.nth(1)
    expect(second).to_contain_text("step 2")
    second.locator("summary").click()
    shot(page, "execution-checkpoints")
    second.locator("form[data-kind=restore] textarea").fill('{"to": 5, "delay": 0.05}')
    second.locator("form[data-kind=restore] button").click()

    expect(page.locator(".message-success")).to_contain_text("Restored from checkpoint “step 2”")
    expect(page.locator("#execution-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#output")).to_contain_text('"resumed_from": 2')
    restored = execution_of(page)
    assert restored.parent_id is not None and str(restored.parent_id) == source["id"]
    assert restored.output["steps"] == [1, 2, 3, 4, 5]
    # Its own checkpoints (added to the page as they came) restore from themselves.
    actions = page.locator("#checkpoints form[data-kind=restore]").evaluate_all(
        "forms => forms.map(f => f.getAttribute('action'))"
    )
    assert actions == [
        f"/checkpoints/{pk}/restore/"
        for pk in restored.checkpoints.order_by("seq").values_list("pk", flat=True)
    ]
    shot(page, "execution-restored")
