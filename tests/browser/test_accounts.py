"""API keys in a real browser: created and shown once (with a copy button), revoked."""

import pytest
import requests
from playwright.sync_api import expect

from accounts.models import ApiKey

pytestmark = pytest.mark.slow


def test_an_api_key_is_shown_once_then_revoked(open_browser, live, owner, shot):
    page = open_browser(owner)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page.click("nav >> text=API keys")
    expect(page.locator("text=No keys yet.")).to_be_visible()
    page.fill("#id_name", "ci-deploy")
    page.click("text=Create key")

    shown = page.locator("#new-key-value")
    expect(shown).to_be_visible()
    raw = shown.input_value()
    key = ApiKey.objects.get(user=owner, name="ci-deploy")
    assert raw.startswith(f"aimos_{key.key_prefix}_")
    me = requests.get(f"{live.url}/api/v1/auth/me", headers={"X-API-Key": raw}, timeout=30)
    assert me.status_code == 200 and me.json()["username"] == "owner"

    page.click("#new-key button[data-copy]")
    expect(page.locator("#new-key button[data-copy]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    shot(page, "api-key-created")

    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    assert raw not in page.content()
    row = page.locator(f'tr[data-key="{key.pk}"]')
    expect(row).to_contain_text("ci-deploy")
    expect(row.locator(".badge")).to_have_text("active")
    shot(page, "api-keys")

    row.locator("text=Revoke").click()  # its confirm() is accepted
    expect(page.locator(".message-success")).to_contain_text("is revoked")
    expect(row.locator(".badge")).to_have_text("revoked")
    refused = requests.get(f"{live.url}/api/v1/auth/me", headers={"X-API-Key": raw}, timeout=30)
    assert refused.status_code == 401
