"""Browser-test fixtures: a real ``prefect server start`` and headless Debian Chromium.

Skipped with a reason when Chromium or Playwright is missing (``scripts/setup_browser.sh``
installs both). Playwright never downloads a browser: it drives ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
#: The docs' screenshots are rewritten only when asked (CLOUDSCHED_SCREENSHOT_DIR=docs/img);
#: a plain run (CI) writes them to a temporary folder and leaves the checkout clean.
SCREENSHOTS = Path(
    os.environ.get("CLOUDSCHED_SCREENSHOT_DIR")
    or Path(tempfile.gettempdir()) / "cloudsched-screenshots"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing; run scripts/setup_browser.sh as root"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed; run scripts/setup_browser.sh"
    if reason:
        for item in items:
            if "browser" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def _has_our_block_types(url: str) -> bool:
    """Healthy, and done registering block types (the UI errors on a half-ready server)."""
    request = urllib.request.Request(
        f"{url}/api/block_types/slug/cloudsched-policy", headers={"Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """``prefect server start`` on a free loopback port with its own SQLite home; yields the URL.

    The test process talks to it through ``PREFECT_API_URL`` for the whole session.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix="cloudsched-ui-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # the UI derives its API URL from these settings, not from --host/--port
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    log = (home / "server.log").open("w")
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    server = subprocess.Popen(
        [prefect, "server", "start"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited early; see {home / 'server.log'}")
            if _has_our_block_types(url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not ready in 120 s; see {home / 'server.log'}")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: f"{url}/api"}):
            yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page with a fixed viewport, so screenshots have a stable size."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where screenshots go (``CLOUDSCHED_SCREENSHOT_DIR=docs/img`` refreshes the docs')."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
