"""A page opened in headless Chromium (the OS package, driven by Playwright): screenshot, console, requests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright


@dataclass
class OpenedPage:
    page: Any
    console: list[tuple[str, str]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def chromium() -> str:
    """Chromium's path; the test fails (never skips) without it: `bash .ci/run` installs it from the OS packages."""
    for name in ("chromium", "chromium-browser", "chromium-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed for the report tests: apt-get install chromium (bash .ci/run does)")


@contextmanager
def open_page(path: Path, width: int = 1200) -> Iterator[OpenedPage]:
    """Open `path` (a local file) and record every console message, page error and request it makes."""
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            opened = OpenedPage(page)
            page.on("console", lambda message: opened.console.append((message.type, message.text)))
            page.on("pageerror", lambda error: opened.console.append(("pageerror", str(error))))
            page.on("request", lambda request: opened.requests.append(request.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            yield opened
        finally:
            browser.close()
