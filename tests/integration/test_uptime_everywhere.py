"""One uptime figure everywhere: the JSON status, the JSON series, the dashboard's list, its
status card and its chart show the same percentage for the same instant, counted from the
session's first link.

The figures are read once every view has every event (read-your-writes covers the status
view; the uptime view is waited for), of sessions whose figure does not move with the clock:
one connected since its link, one stopped after a drop.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from projections.uptime import uptime_percent
from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import Dashboard
from tests.integration.test_gateway_worker import eventually, simulate, status

# The service does not retry a dropped link for 10 minutes: the session stays disconnected.
OVERRIDES = {"SESSIOND_RETRY_BASE": "600", "SESSIOND_RETRY_CAP": "600"}
PERCENT = r"(—|[0-9.]+ %)"


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return OVERRIDES


def as_number(shown: str) -> float | None:
    """A figure as the dashboard prints it (``83.33 %``, ``100 %``, ``—``)."""
    return None if shown == "—" else float(shown.removesuffix(" %"))


async def views_have_everything(api: Api) -> None:
    """Wait until the uptime view has every recorded event (the status copy has them once a
    command has answered)."""
    head = api.container.app.recorder.max_notification_id() or 0
    view = api.container.uptime_view

    async def caught_up() -> bool:
        return (view.max_tracking_id(api.container.app.name) or 0) >= head

    await eventually(caught_up)


async def figures(api: Api, dash: Dashboard, created: dict[str, Any]) -> dict[str, Any]:
    """The session's uptime as every place shows it."""
    sid = created["sessionId"]
    found: dict[str, Any] = {"status": (await status(api, created))["metrics"]["uptime"]}
    for bucket in ("day", "hour"):
        answer = await api.client.get(
            f"/sessions/{sid}/uptime", params={"bucket": bucket}, headers=api.key(created)
        )
        assert answer.status_code == 200, answer.text
        found[f"series by {bucket}"] = answer.json()["uptime"]
    listing = (await dash.get("/dashboard/")).text
    line = re.search(rf'<tr data-session="{sid}">(.*?)</tr>', listing, re.S)
    assert line, "the session is in the list"
    cell = re.search(rf'data-label="Uptime \(30 d\)" class="num">{PERCENT}</td>', line.group(1))
    assert cell, line.group(1)
    found["list"] = as_number(cell.group(1))
    page = (await dash.get(f"/dashboard/sessions/{sid}")).text
    card = re.search(rf"<dt>Uptime \(30 days\)</dt><dd>{PERCENT}</dd>", page)
    assert card, "the status card shows the uptime"
    found["card"] = as_number(card.group(1))
    chart = re.search(r"over the last 30 days: ([0-9.]+ %) overall", page)
    found["chart"] = as_number(chart.group(1)) if chart else None
    return found


async def event_times(api: Api, created: dict[str, Any]) -> dict[str, list[datetime]]:
    answer = await api.client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
    times: dict[str, list[datetime]] = {}
    for event in answer.json()["items"]:
        times.setdefault(event["type"], []).append(datetime.fromisoformat(event["timestamp"]))
    return times


async def test_every_place_shows_the_same_uptime_counted_from_the_first_link(api: Api) -> None:
    dash = Dashboard(api.client)
    await dash.sign_in()

    # A session linked only once its QR code is shown (after a wait for the scan), then
    # connected: 100 % everywhere, the wait for the scan is not downtime.
    steady = await api.create_session("Steady")
    await simulate(api, steady, "scan")
    # A session linked, dropped, then stopped while disconnected: a figure below 100 that
    # stands still.
    flaky = await api.create_session("Flaky")
    await simulate(api, flaky, "scan")
    await simulate(api, flaky, "drop")
    assert (await status(api, flaky))["status"] == "disconnected"
    stopped = await api.client.post(f"/sessions/{flaky['sessionId']}/stop", headers=ADMIN)
    assert stopped.status_code == 200, stopped.text
    never = await api.create_session("Never linked")
    await views_have_everything(api)

    # Check the steady session: 100 in every place, though it waited for its scan.
    times = await event_times(api, steady)
    assert times["Connected"][0] > times["Created"][0]
    assert set((await figures(api, dash, steady)).values()) == {100.0}

    # Check the flaky session: connected from its link to the drop, in service from its link
    # to the stop; every place gives that figure.
    times = await event_times(api, flaky)
    linked, dropped = times["Connected"][0], times["Disconnected"][0]
    expected = uptime_percent(
        (times["Stopped"][0] - linked).total_seconds(), (dropped - linked).total_seconds()
    )
    assert expected is not None and 0 < expected < 100
    shown = await figures(api, dash, flaky)
    assert shown == dict.fromkeys(shown, expected), shown

    # Check a session never linked has no uptime anywhere (null, "—").
    shown = await figures(api, dash, never)
    assert shown == dict.fromkeys(shown), shown
