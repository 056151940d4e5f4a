"""Real-browser tests: Debian's Chromium driven by Playwright, against real servers.

Skipped, with the reason, where ``/usr/bin/chromium`` or the ``playwright`` package is missing
(``ECHO_REQUIRE_BROWSER=1`` turns that skip into a failure, as CI wants). Playwright never
downloads a browser here: it launches the system Chromium by path, with the flags that keep it
off the network.

Screenshots land in a per-session temporary folder (printed with ``-rA``/``-s``); set
``ECHO_UPDATE_SCREENSHOTS=1`` to also copy them into ``docs/img/`` for the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from echo_pipeline.infra.paths import PROJECT_ROOT

CHROMIUM = Path(os.environ.get("ECHO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG = PROJECT_ROOT / "docs" / "img"
#: Every wait in these tests is bounded; a UI action that takes longer than this is a failure.
ACTION_TIMEOUT_MS = 30_000


def _missing_browser() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")  # closes its event loop before non-browser tests run
def browser():
    """One headless Chromium for the session; each test opens its own context."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("ECHO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser):
    """Open a page in a fresh context (fresh storage), with bounded default timeouts."""
    contexts = []

    def open_page(
        width: int = 1600, height: int = 900, init_script: str | None = None, scale: float = 1
    ):
        context = browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=scale
        )
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(60_000)
        if init_script:
            context.add_init_script(init_script)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def save_screenshot(screenshot_dir) -> Callable[..., Path]:
    """Save a PNG of ``page`` as ``name``; also into docs/img/ when ECHO_UPDATE_SCREENSHOTS=1."""

    def save(page, name: str, **options) -> Path:
        path = screenshot_dir / name
        page.screenshot(path=str(path), **options)
        assert path.stat().st_size > 10_000, f"{name} looks empty"
        if os.environ.get("ECHO_UPDATE_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_IMG / name)
        print(f"screenshot: {path}")
        return path

    return save
