"""Playwright driving Debian's chromium: fixtures and page helpers for the browser tests.

Not a test module. Tests load it as a plugin (``pytest_plugins = ["tests.browser"]``) to
get the ``chromium`` (a browser) and ``browser_page`` (a fresh context on the live
server, with screenshot and login helpers) fixtures.

Playwright never downloads a browser here: it is always launched with
``executable_path=/usr/bin/chromium``. Without that binary the browser tests are skipped,
except under ``CI=true``, where a missing browser fails them: CI must not go green by
running nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)
from pytest_django.live_server_helper import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The commonest laptop screen: what a reviewer actually looks at (issue 9: no page may
# scroll sideways at this size).
VIEWPORT: ViewportSize = {"width": 1366, "height": 768}
# Generous for a 2-core machine shared with other test runs; a healthy page takes < 1 s.
TIMEOUT_MS = 15_000

# What `manage.py seed_demo` gives the demo staff unless DEMO_PASSWORD says otherwise.
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD") or "countersign-demo"


def screenshot_dir() -> Path:
    path = Path(settings.VAR_DIR) / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Assertions wait as long as actions do (Playwright's own default is 5 s).
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A headless chromium for one test (starting one takes about a second).

    Per test, not per session, because of how Playwright's sync API works: while it runs,
    this thread has a running asyncio loop, so Django keeps its database connections in
    context-local rather than thread-local storage, and the ORM opens connections of its
    own. They are closed before Playwright stops; after that the ORM is back on the
    connection pytest-django manages (the one that holds the serialized-rollback
    snapshot), and no later test runs with a stray loop.
    """
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}: the browser tests cannot run.", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
            connections.close_all()


@dataclass
class BrowserPage:
    """A page in its own browser context, plus what it complained about and its screenshots."""

    page: Page
    base_url: str
    shot_prefix: str
    errors: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base_url + path

    def goto(self, path: str) -> None:
        response = self.page.goto(self.url(path))
        assert response is not None and response.ok, (
            f"GET {path}: {response.status if response else 'no response'}"
        )

    def assert_no_sideways_scroll(self) -> None:
        widths = self.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], (
            f"{self.page.url} scrolls sideways: {widths[0]} px of content in {widths[1]} px"
        )

    def screenshot(self, name: str) -> Path:
        """Save a full-page PNG as <VAR_DIR>/screenshots/<test>-<NN>-<name>.png.

        Every page a test pictures is also checked for sideways scrolling.
        """
        self.assert_no_sideways_scroll()
        path = screenshot_dir() / f"{self.shot_prefix}-{len(self.shots) + 1:02d}-{name}.png"
        # From the top: the admin's sticky sidebar would otherwise be drawn where the
        # page happened to be scrolled to. (Full-page captures also leave out-of-process
        # iframes, such as the sandboxed HTML preview, blank: see element_screenshot.)
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def element_screenshot(self, locator: Locator, name: str) -> Path:
        """Save one element as it is painted on screen (iframes included)."""
        path = screenshot_dir() / f"{self.shot_prefix}-{len(self.shots) + 1:02d}-{name}.png"
        locator.scroll_into_view_if_needed()
        # An out-of-process iframe repaints on its own schedule after a full-page capture
        # has resized the view; a picture is all that waits for it, never an assertion.
        self.page.wait_for_timeout(300)
        locator.screenshot(path=str(path))
        self.shots.append(path)
        return path

    def login(self, username: str, password: str = DEMO_PASSWORD) -> None:
        self.goto("/admin/login/")
        self.assert_no_sideways_scroll()
        self.page.locator("#id_username").fill(username)
        self.page.locator("#id_password").fill(password)
        self.page.locator("#login-form [type=submit]").click()
        # The admin greets by first name (or username) once the session exists.
        expect(self.page.locator("#user-tools")).to_be_visible()
        expect(self.page.locator("#logout-form")).to_be_attached()

    def logout(self) -> None:
        # Django 5 logs out by POST only: the header's "Log out" is a form button.
        self.page.locator("#logout-form button[type=submit]").click()
        expect(self.page.locator("#content h1")).to_have_text("Logged out")

    def success_message(self) -> str:
        message = self.page.locator("ul.messagelist li.success")
        expect(message).to_be_visible()
        return message.inner_text()


CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Keep the call-phase report on the item, so the page fixture knows at teardown.
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


def _shot_prefix(nodeid: str) -> str:
    name = nodeid.rsplit("::", 1)[-1].removeprefix("test_")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:60]


@pytest.fixture
def browser_page(
    chromium: Browser, live_server: LiveServer, request: pytest.FixtureRequest
) -> Iterator[BrowserPage]:
    """A fresh context (no cookies) on the live server; console errors are collected."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    wrapper = BrowserPage(
        page=page, base_url=str(live_server.url), shot_prefix=_shot_prefix(request.node.nodeid)
    )
    # Only this run's pictures: a step that no longer happens must not leave an old one.
    for stale in screenshot_dir().glob(f"{wrapper.shot_prefix}-*.png"):
        stale.unlink()

    def on_console(message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico on its own; the admin has none, and that is fine.
        source = message.location.get("url", "")
        if message.type == "error" and not source.endswith("/favicon.ico"):
            wrapper.errors.append(f"console: {message.text} ({source})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: wrapper.errors.append(f"page error: {exc}"))
    try:
        yield wrapper
        report = request.node.stash.get(CALL_REPORT, None)
        if report is not None and report.failed:
            # What the browser showed when the test gave up: usually the fastest diagnosis.
            wrapper.screenshot("failure")
    finally:
        context.close()
