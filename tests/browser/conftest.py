"""Debian's Chromium, driven by Playwright, against a real `sessiond serve` with the simulator.

The browser is the one the test set-up installed (`make test` installs the Debian packages
`chromium` and `chromium-driver` when /usr/bin/chromium is missing); nothing is downloaded.
A missing browser fails the tests with a clear message: they never skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, Sessiond, sessiond_env, start

__all__ = ["sessiond_env", "start"]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium. Install it with "
            "`apt-get install -y --no-install-recommends chromium chromium-driver` "
            "(`make test` does this when it is missing)."
        )
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    yield launched
    launched.close()


@pytest.fixture
def server(start: Callable[..., Sessiond], sessiond_env: dict[str, str]) -> Sessiond:
    """`sessiond serve` with QR codes that turn over quickly (each lasts 3 s)."""
    env = {
        **sessiond_env,
        "SESSIOND_QR_FIRST_TIMEOUT": "3",
        "SESSIOND_QR_NEXT_TIMEOUT": "3",
        "SESSIOND_QR_MAX_CODES": "40",
    }
    return start("serve", env)


@pytest.fixture
def page(browser: Browser, server: Sessiond) -> Iterator[Page]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield opened
    context.close()
    # Answers of 4xx (a refused key, a refused name) are logged by the browser as failed loads.
    real = [e for e in errors if not e.startswith("Failed to load resource")]
    assert not real, f"the page had script errors: {real}"


@pytest.fixture
def api(server: Sessiond) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def screenshot(page: Page, name: str) -> None:
    """Saved as a test artefact (test-artifacts/screenshots/, ignored by git)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/dashboard/")
    page.get_by_label("Admin key").fill(key)
    page.get_by_label("Admin key").press("Enter")  # the keyboard alone signs in


def mark(page: Page) -> None:
    """A marker that a navigation (reload) would wipe out."""
    page.evaluate("window.__sameDocument = true")


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def session_id_of(page: Page) -> str:
    found = re.search(r"/sessions/(sess_[0-9a-f]+)", page.url)
    assert found, page.url
    return found.group(1)


def scan(api: httpx.Client, session_id: str) -> None:
    response = api.post(f"/simulator/sessions/{session_id}/scan", headers=ADMIN)
    assert response.status_code == 200, response.text


def admin_json(api: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = api.request(method, path, headers=ADMIN, **kwargs)
    assert response.is_success, response.text
    return response.json() if response.content else None
