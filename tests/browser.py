"""A real headless browser for the console's tests: Debian's ``chromium`` driven by
Playwright's Python driver (never a downloaded browser build), and a watch on what the
page logs, so a test fails on any console error it did not ask for.

``make system-deps`` installs chromium (scripts/ensure-system-deps).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect, sync_playwright

from .procs import ROOT

__all__ = ("SHOTS", "ConsoleWatch", "chromium", "launch", "shoot", "unnamed_controls")

# How long an `expect` check waits for the page (as long as the tests' own waits).
EXPECT_MS = 30_000
# Screenshots of each view: test artifacts, never committed (build/ is ignored).
SHOTS = Path(os.environ.get("AGENTD_CONSOLE_SHOTS", ROOT / "build" / "console-screenshots"))
# The network line Chromium logs for an answer >= 400 the page asked for.
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


def chromium() -> str:
    """The system browser: the test set-up (make system-deps) installs it."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise AssertionError(
            "chromium is missing: run `make system-deps` (apt-get install chromium)"
        )
    return path


@contextmanager
def launch() -> Iterator[Browser]:
    """The browser, with `expect` waiting as long as the pages do (the machine may be
    shared and slow; Playwright's default is 5 s), for the module that launched it."""
    expect.set_options(timeout=EXPECT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield browser
        finally:
            browser.close()
            expect.set_options(timeout=5_000)  # Playwright's default


@dataclass
class ConsoleWatch:
    """Everything a page logs as an error, and every HTTP answer >= 400 it received.

    A view that handles an error answer on purpose (a 412 conflict, a 404 for an API an
    older server lacks) is declared with :meth:`expect`; Chromium logs each such answer
    as a console error, which :meth:`check` then accepts, and only then.
    """

    page: Page
    errors: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, int]] = field(default_factory=list)
    expected: list[tuple[str, re.Pattern[str], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        self.page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "assert"):
            where = message.location.get("url", "")
            self.errors.append(f"{message.text} ({where})" if where else message.text)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            path = urlsplit(response.url).path
            self.failures.append((response.request.method, path, response.status))

    def expect(self, method: str, path: str, status: int) -> None:
        """An answer the page is meant to get and handle (``path`` a regex)."""
        self.expected.append((method, re.compile(path), status))

    def check(self) -> None:
        unexpected = [
            f
            for f in self.failures
            if not any(m == f[0] and p.fullmatch(f[1]) and s == f[2] for m, p, s in self.expected)
        ]
        assert not unexpected, f"error answers the test did not expect: {unexpected}"
        statuses = {status for *_, status in self.failures}
        stray = []
        for text in self.errors:
            found = _FAILED_LOAD.search(text)
            if found is None or int(found.group(1)) not in statuses:
                stray.append(text)
        assert not stray, f"the browser's console has errors: {stray}"


# Visible controls without an accessible name: no label, no aria-label(ledby), and for a
# button or link no text. A simplification of the accessible-name computation that
# holds for how the console names its controls.
_UNNAMED = """() => [...document.querySelectorAll('button, input, select, textarea, a[href]')]
  .filter((el) => el.getClientRects().length > 0)
  .filter((el) => !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
                    || (el.labels && el.labels.length)
                    || (['BUTTON', 'A'].includes(el.tagName) && el.textContent.trim())))
  .map((el) => el.outerHTML.slice(0, 160))"""


def unnamed_controls(page: Page) -> list[str]:
    """The visible controls of the page a screen reader could not name."""
    found: list[str] = page.evaluate(_UNNAMED)
    return found


def shoot(page: Page, name: str) -> Path:
    """A screenshot of the page as it is, under SHOTS."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
