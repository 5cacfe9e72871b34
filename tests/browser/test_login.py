"""Logging in and out of the dashboard in a real browser; another user's pages are a 404."""

import pytest
from playwright.sync_api import expect

from agents import services as agents
from executions.tests.live import Client, deploy

pytestmark = pytest.mark.slow


def test_login_refuses_a_wrong_password_then_logs_in_and_out(open_browser, owner, shot):
    page = open_browser(None)
    page.goto("/agents/")
    assert "/login/?next=/agents/" in page.url  # the login page remembers where to go next
    page.fill("#id_username", "owner")
    page.fill("#id_password", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator(".form-errors")).to_have_text("Wrong username, email or password.")
    shot(page, "login-error")

    page.fill("#id_username", "owner@example.com")
    page.fill("#id_password", "correct-horse-battery")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Agents")
    expect(page.locator(".who")).to_have_text("Olive Owner")

    page.click("text=Log out")
    expect(page.locator("h1")).to_have_text("Log in to AIMOS")
    shot(page, "login")
    page.goto("/")
    assert "/login/" in page.url


def test_another_user_gets_a_404_for_the_first_users_pages(open_browser, live, owner, other, shot):
    client = Client(live, owner)
    agent_id = deploy(client, "echo")
    run = client.post(f"/agents/{agent_id}/execute", json={"input": {"a": 1}, "wait": 30}).json()
    assert run["status"] == "completed"
    agents.create_agent(owner, name="secret-plans")

    page = open_browser(other)
    for path in (f"/agents/{agent_id}/", f"/executions/{run['id']}/"):
        response = page.goto(path)
        assert response.status == 404, path
        expect(page.locator("h1")).to_have_text("Not found")
    shot(page, "not-found")

    page.goto("/agents/")
    expect(page.locator("h2", has_text="No agents yet")).to_be_visible()
    page.goto("/executions/")
    expect(page.locator("text=No runs yet.")).to_be_visible()

    mine = open_browser(owner)
    assert mine.goto(f"/executions/{run['id']}/").status == 200
    expect(mine.locator("#execution-status")).to_have_text("completed")
