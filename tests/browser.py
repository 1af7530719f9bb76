"""
A real browser for the tests: Debian's ``chromium`` (``/usr/bin/chromium``, installed by
``.ci/run`` like redis-server) driven by Playwright's own protocol client (``playwright`` in the
test extra; no browser is downloaded: Playwright is pointed at the system binary).

``browser`` is one Chromium per test module; ``browser_page(**context_options)`` opens a page
in a new context (viewport, ``device_scale_factor``...) closed after the test. The browser is
headless, sandbox-less (the CI runs as root) and quiet: no GPU, no background networking,
updates, sync or first-run work, so what it fetches is what the page asks for.
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: "
                    "apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=list(CHROMIUM_ARGS), timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_page(browser):
    contexts = []

    def open_page(**context_options):
        context = browser.new_context(**context_options)
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()
