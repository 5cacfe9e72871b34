"""Headless Chromium (Debian's, driven by Playwright) against the live stack: daphne and real
RQ workers on the test database (`live` in the root conftest).

Playwright's sync API runs an event loop in this thread, so Django, which refuses ORM calls
while a loop runs, is told the calls are safe: they are, the loop only drives the browser.
"""

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
PASSWORD = "correct-horse-battery"  # what the root conftest gives owner, other and admin
# The machine is small and shared: generous waits, never a timing assertion.
TIMEOUT_MS = 15_000


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup-system (it installs chromium)")
    from playwright.sync_api import expect, sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def open_browser(browser, live):
    """`open_browser(user)`: a fresh browser context logged in as `user` through the login
    page; `open_browser(None)` stays logged out. Every context is closed after the test, or
    earlier by `open_browser.close_all()` (before the test's own teardown changes what its
    pages show: a page that navigates as its context closes can leave the close waiting on
    Chromium for good).

    Each page is taken to about:blank first (a navigation Playwright bounds): then nothing of
    it runs, no socket or navigation of it is open, when its context closes."""
    contexts = []

    def open_(user=None, *, width: int = 1280, height: int = 900):
        context = browser.new_context(
            base_url=live.url, viewport={"width": width, "height": height}
        )
        context.set_default_timeout(TIMEOUT_MS * 2)
        contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() of data-confirm forms
        if user is not None:
            log_in(page, user.username)
        return page

    def close_all() -> None:
        while contexts:
            context = contexts.pop()
            for page in context.pages:
                page.goto("about:blank")
            context.close()

    open_.close_all = close_all
    yield open_
    close_all()


def log_in(page, username: str, password: str = PASSWORD) -> None:
    from playwright.sync_api import expect

    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")


@pytest.fixture
def shot():
    """`shot(page, name)`: a full-page screenshot in test-output/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True, animations="disabled")
        return path

    return take


def in_thread(call, *args, **kwargs):
    """Call a service from another thread and return what it returns.

    Needed for services that publish to the channel layer (`notifications.feed`): asgiref refuses
    `async_to_sync` in a thread where an event loop runs, and Playwright's runs in this one.
    """
    import threading

    from django.db import connection

    outcome = {}

    def run():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"{call.__name__} did not return"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
