"""The web console in a real browser: Playwright's Python client driving Debian's Chromium
(/usr/bin/chromium; Playwright downloads no browser), against the shared real `oasis serve`
of the integration tests. One browser per session, a new context (no shared storage) per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import conftest as integration
from tests.integration.conftest import ROOT, LiveServer

live = integration.live  # the integration tests' shared server (a session fixture), reused

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path(os.environ.get("OASIS_CHROMIUM", "/usr/bin/chromium"))
SHOTS = ROOT / "docs" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this
# thread while it is open, and every later test's asyncio.run() would fail ("cannot be called
# from a running event loop"); closed after this directory's tests, it leaves none behind.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set OASIS_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs it (make install-dev): never skip quietly there
        pytest.skip(why)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Console:
    """A page of the console in a fresh browser context, and what went wrong in it: uncaught
    errors and console errors (a CSP violation is one)."""

    def __init__(self, browser: Any, server: LiveServer, viewport: dict[str, int]) -> None:
        self.server = server
        self.context = browser.new_context(viewport=viewport, locale="en-US")
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # a 401/403 answer is logged by the browser as a failed resource: expected in tests
        if message.type == "error" and "status of 40" not in message.text:
            self.errors.append(f"console: {message.text}")

    def open(self, route: str = "") -> None:
        self.page.goto(f"{self.server.base_url}/{'#/' + route if route else ''}")

    def sign_in(self, key: str | None = None) -> None:
        self.open("sign-in")
        self.page.fill("#api-key", key or self.server.api_key)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_selector("#composer")
        self.page.wait_for_function("() => document.querySelector('#model').options.length > 0")

    def go(self, route: str) -> None:
        self.page.evaluate("r => { location.hash = '#/' + r; }", route)

    def shot(self, name: str, *, full_page: bool = False) -> None:
        """docs/console/NAME.png, only when OASIS_SCREENSHOTS=1 (CI leaves them as they are);
        ``full_page``: the whole page at the viewport's width, not just the viewport."""
        if os.environ.get("OASIS_SCREENSHOTS") == "1":
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def console(browser: Any, live: LiveServer) -> Iterator[Console]:
    c = Console(browser, live, DESKTOP)
    yield c
    errors = c.errors
    c.close()
    assert not errors, errors


@pytest.fixture
def phone(browser: Any, live: LiveServer) -> Iterator[Console]:
    c = Console(browser, live, PHONE)
    yield c
    errors = c.errors
    c.close()
    assert not errors, errors
