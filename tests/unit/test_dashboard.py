"""What the dashboard shows of sessions (states in words and colour, the list's pages and
counts, the uptime chart, the formats), and the rules of its sign-in that need no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.dashboard.chart import chart, window
from api.dashboard.present import (
    PER_PAGE,
    duration,
    event_name,
    list_page,
    percent,
    qr_panel,
    state_of,
)
from api.dashboard.security import cookie_secret, safe_next
from infra.settings import Settings, SettingsError
from projections.status import SessionRow
from projections.uptime import Bucket

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def row(number: int, **fields: object) -> SessionRow:
    values: dict[str, object] = {
        "session_id": f"sess_{number:032x}",
        "name": f"s{number}",
        "status": "connecting",
        "created_at": NOW - timedelta(minutes=1000 - number),
        "updated_at": NOW,
        **fields,
    }
    return SessionRow(**values)  # type: ignore[arg-type]


def test_a_session_state_is_its_status_unless_stopped_or_degraded() -> None:
    assert state_of(row(1, status="connected")) == "connected"
    assert state_of(row(1, status="connected", degraded=True)) == "degraded"
    assert state_of(row(1, status="disconnected", desired="stopped")) == "stopped"
    assert state_of(row(1, status="expired")) == "expired"


def test_the_list_counts_every_state_pages_newest_first_and_leaves_deleted_out() -> None:
    rows = [row(n, status="connected", degraded=n % 2 == 0) for n in range(120)]
    rows += [row(200, status="disconnected", desired="stopped"), row(201, desired="deleted")]
    first = list_page(rows, "all", 1, NOW)
    assert first.counts == {
        "all": 121,
        "connected": 120,
        "connecting": 0,
        "disconnected": 0,
        "expired": 0,
        "stopped": 1,
    }
    assert first.pages == 3 and len(first.lines) == PER_PAGE
    assert first.lines[0].row.name == "s200"  # newest first
    assert {line.state for line in first.lines} == {"stopped", "connected", "degraded"}
    last = list_page(rows, "connected", 99, NOW)
    assert last.page == 3 and last.first == 101 and last.last == 120
    assert [line.label for line in list_page(rows, "stopped", 1, NOW).lines] == ["Stopped"]
    assert list_page([], "all", 1, NOW).first == 0


def test_the_qr_panel_scales_and_counts_down() -> None:
    shown = row(1, qr_code="2@abc,def", qr_expires_at=NOW + timedelta(seconds=12.2))
    shown = SessionRow(
        **{
            **{f: getattr(shown, f) for f in shown.__struct_fields__},
            "qr_attempt": 2,
            "qr_max_attempts": 6,
        }
    )
    panel = qr_panel(shown, NOW)
    assert panel is not None
    assert 'viewBox="0 0 ' in panel.svg and 'width="' not in panel.svg.split(">")[0]
    assert (panel.attempt, panel.max_attempts, panel.seconds_left) == (2, 6, 13)
    assert qr_panel(row(1), NOW) is None


def test_the_chart_has_a_bar_a_day_with_an_accessible_title() -> None:
    begin, end = window(NOW)
    assert begin == datetime(2026, 10, 28, tzinfo=UTC) and end == NOW
    day = timedelta(days=1)
    points = [Bucket(begin + i * day, begin + (i + 1) * day, 0.0, 0.0) for i in range(28)]
    points.append(Bucket(begin + 28 * day, begin + 29 * day, 86_400.0, 86_400.0))
    points.append(Bucket(begin + 29 * day, NOW, 43_200.0, 21_600.0))
    drawn = chart(points)
    assert len(drawn.bars) == 30
    assert drawn.bars[0].tone == "none" and drawn.bars[0].title.endswith("not in service")
    assert drawn.bars[28].tone == "ok" and drawn.bars[28].height == 100
    assert drawn.bars[29].tone == "bad"
    assert drawn.bars[29].title == "2026-11-26: 50 % connected (6 h 0 min of 12 h 0 min)"
    # Check the overall figure is the JSON API's: 108,000 s connected of 129,600 in service.
    assert drawn.uptime == 83.33
    assert drawn.summary == "Uptime by day over the last 30 days: 83.33 % overall"


def test_formats_read_as_an_operator_expects() -> None:
    assert duration(59) == "59 s"
    assert duration(3_725) == "1 h 2 min"
    assert duration(3 * 86_400 + 7_200) == "3 d 2 h"
    # An uptime as the JSON API gives it (a percentage, two decimals), without trailing zeros.
    assert percent(None) == "—"
    assert percent(99.95) == "99.95 %"
    assert percent(99.9) == "99.9 %"
    assert percent(100.0) == "100 %"
    assert percent(0.0) == "0 %"
    assert percent(48.2) == "48.2 %"
    assert event_name("ApiKeyIssued") == "Api key issued"
    assert event_name("QRIssued") == "QR issued"


def test_the_cookie_key_is_stable_per_admin_key_and_secret_and_the_secret_must_be_long() -> None:
    first = cookie_secret("hash-a", None)
    assert len(first) == 32 and first == cookie_secret("hash-a", None)
    assert first != cookie_secret("hash-b", None)  # a new admin key signs everyone out
    assert first != cookie_secret("hash-a", "s" * 32)
    with pytest.raises(SettingsError, match="DASHBOARD_SECRET must be at least 32"):
        Settings.from_env({"SESSIOND_DASHBOARD_SECRET": "short"})
    settings = Settings.from_env(
        {"SESSIOND_DASHBOARD_SECRET": "s" * 32, "SESSIOND_DASHBOARD_SECURE_COOKIE": "true"}
    )
    assert settings.dashboard_secret == "s" * 32 and settings.dashboard_secure_cookie


def test_only_dashboard_paths_are_where_signing_in_leads() -> None:
    assert safe_next("/dashboard/sessions/new") == "/dashboard/sessions/new"
    for elsewhere in (None, "", "//evil.test/", "https://evil.test/", "/sessions", "/dashboard\\x"):
        assert safe_next(elsewhere) == "/dashboard/"
