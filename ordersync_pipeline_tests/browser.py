"""Debian's Chromium driven by Playwright, with a screenshot of every step and their paths on failure."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright's own download cannot work here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Steps:
    """Screenshots named after the steps, numbered in order, under one folder."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.paths = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.paths.append(path)
        return path


@contextmanager
def chromium_page(folder: Path, console_errors: list[str] | None = None) -> Iterator[Steps]:
    """A fresh browser page; on any failure, a last screenshot and every screenshot's path are printed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            if console_errors is not None:
                page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
                page.on("pageerror", lambda error: console_errors.append(str(error)))
            steps = Steps(page, folder)
            try:
                yield steps
            except BaseException:
                try:
                    steps.shot("failure")
                finally:
                    print("Screenshots of each step:\n" + "\n".join(f"  {path}" for path in steps.paths))
                raise
        finally:
            browser.close()
