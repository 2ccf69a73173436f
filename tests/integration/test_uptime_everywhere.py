"""One uptime figure everywhere: the JSON status, the JSON series, the dashboard's list, its
status card and its chart show the same percentage for the same instant, counted from the
session's first link.

The figures are read once every view has every event (read-your-writes covers the status
view; the uptime view is waited for), of sessions whose figure does not move with the clock:
one connected since its link, one stopped after a drop.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from infra.bootstrap import Container
from infra.postgres.uptime import PostgresUptimeView
from infra.runtime.rebuild import ViewRebuild
from projections.uptime import split_by_day, uptime_percent
from tests.conftest import test_settings
from tests.integration.conftest import ADMIN, Api
from tests.integration.dashboard_client import Dashboard
from tests.integration.steps import eventually, simulate, status

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
    view = api.container.views.of(PostgresUptimeView)

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


async def test_a_database_of_the_previous_release_works_and_a_rebuild_counts_from_the_link(
    api: Api, database_url: str, tmp_path: Path
) -> None:
    # A session that waited for its scan, then was connected until stopped.
    created = await api.create_session("Upgraded")
    sid = created["sessionId"]
    await simulate(api, created, "scan")
    assert (await api.client.post(f"/sessions/{sid}/stop", headers=ADMIN)).status_code == 200
    await views_have_everything(api)
    times = await event_times(api, created)
    wait = times["Connected"][0] - times["Created"][0]
    assert wait.total_seconds() > 0

    # The row as the previous release wrote it: no `linked_at`, and the wait for the scan
    # counted as time meant to be running (not connected).
    with psycopg.connect(database_url, autocommit=True) as conn:
        (doc,) = conn.execute("SELECT doc FROM session_status WHERE session_id = %s", (sid,))
        row = json.loads(doc[0])
        assert row.pop("linked_at") is not None
        row["running_seconds"] += wait.total_seconds()
        for day, seconds in split_by_day(times["Created"][0], times["Connected"][0]):
            row["days"].setdefault(day, [0.0, 0.0])[0] += seconds
        conn.execute(
            "UPDATE session_status SET doc = %s WHERE session_id = %s", (json.dumps(row), sid)
        )
    old_basis = uptime_percent(row["running_seconds"], row["connected_seconds"])
    assert old_basis is not None and old_basis < 100

    # Check a process of this release started on that database reads it: the session still
    # has its figure, counted from creation as that release did.
    settings = test_settings(tmp_path / "new", database_url, SESSIOND_DEFAULT_RATE_LIMIT="1000")
    upgraded = Container(settings, database_url, frozenset({"api"}))
    async with AsyncTestClient(app=upgraded.create_api()) as client:
        new = Api(client, upgraded)
        assert (await status(new, created))["metrics"]["uptime"] == old_basis

        # Check the rebuild the README asks for counts it from the first link, as the
        # series does: 100, the session was connected from its link to its stop.
        report = await asyncio.to_thread(
            ViewRebuild(api.container, "session_status", progress=False).run
        )
        assert report.generation == 1

        async def rebuilt() -> Any:
            return (await status(new, created))["metrics"]["uptime"] == 100.0

        await eventually(rebuilt)
        dash = Dashboard(client)
        await dash.sign_in()
        assert set((await figures(new, dash, created)).values()) == {100.0}
