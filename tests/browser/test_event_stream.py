"""The live event stream in a real browser: Chromium's own `EventSource` follows every
session's events for a signed-in operator, and when the server is killed (SIGKILL) and
started again on the same address it reconnects by itself with `Last-Event-ID` and resumes
with 0 events lost or duplicated."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import sign_in
from tests.e2e.conftest import Sessiond, free_port
from tests.e2e.streams import inbound, inbound_once_resumed, linked_session, message_positions

pytestmark = pytest.mark.browser

LISTEN = """() => {
  window.__events = [];
  window.__opens = 0;
  const source = new EventSource("/dashboard/events/stream?types=message.received");
  source.addEventListener("message.received", (event) => {
    window.__events.push({id: event.lastEventId, text: JSON.parse(event.data).data.text,
                          session: JSON.parse(event.data).data.sessionId});
  });
  source.onopen = () => { window.__opens += 1; };
  window.__source = source;
}"""


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def page(browser: Browser, port: int) -> Iterator[Page]:
    context = browser.new_context(
        base_url=f"http://127.0.0.1:{port}", viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(30_000)
    opened = context.new_page()
    yield opened
    context.close()


def received(page: Page) -> list[dict[str, str]]:
    found: list[dict[str, str]] = page.evaluate("() => window.__events")
    return found


def test_the_browsers_event_source_resumes_after_a_killed_server_with_nothing_lost(
    page: Page, port: int, start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env, port=port)
    sign_in(page)
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    client = server.client()
    created = linked_session(client, "Watched in a browser")
    sid = created["sessionId"]

    # Check the browser's EventSource receives events live, with their positions as ids.
    page.evaluate(LISTEN)
    page.wait_for_function("() => window.__opens === 1")
    for n in range(5):
        inbound(client, sid, f"before-{n}")
    page.wait_for_function("() => window.__events.length === 5")

    # Check: the server is killed, started again on the same address, more events come.
    server.stop(signal.SIGKILL)
    client.close()
    server = start("serve", sessiond_env, port=port)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in range(5):
            inbound_once_resumed(client, sid, f"after-{n}")
        page.wait_for_function("() => window.__events.length >= 10 && window.__opens === 2")
        positions = message_positions(client, sid, after=0)
    events = received(page)
    assert [e["text"] for e in events] == [f"before-{n}" for n in range(5)] + [
        f"after-{n}" for n in range(5)
    ]
    assert [int(e["id"]) for e in events] == positions
    assert {e["session"] for e in events} == {sid}
    page.evaluate("() => window.__source.close()")
