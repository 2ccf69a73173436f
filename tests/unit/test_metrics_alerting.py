"""The `/metrics` figures the alerting rules need: how long sessions are down (from the
status view's `down_since`), webhook endpoints disabled or failing, requests refused or near
a session's rate limit, and message counters that never go down when a session is deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.controllers.metrics import DOWN_MINUTES, Scrape, SessionsCollector, down_seconds
from api.ratelimit import SessionRateLimiter, near_limit
from domain.alerts import CONDITIONS
from domain.values import ADMIN_ACTOR
from projections.status import SessionRow
from projections.webhooks import EndpointHealth
from tests.unit.helpers import catch_up, connected, popo_app

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
JID = "4915112345678:1@s.whatsapp.net"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(rows: list[SessionRow], scrape: Scrape | None = None) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SessionsCollector(rows, {}, scrape or Scrape(now=NOW, lags={})))
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def row(name: str, **changes: object) -> SessionRow:
    base = SessionRow(
        session_id=f"sess_{name}", name=name, status="connected", created_at=NOW, updated_at=NOW
    )
    return msgspec.structs.replace(base, **changes)


def down_for(minutes: float, **changes: object) -> SessionRow:
    since = NOW - timedelta(minutes=minutes)
    return row(f"down{minutes}", **{"status": "disconnected", "down_since": since, **changes})


# -- the status view's down_since -----------------------------------------------------------


def test_down_since_is_the_first_disconnection_and_holds_through_retries_until_connected() -> None:
    app = popo_app()
    projection, session_id, uuid = connected(app, JID)
    catch_up(app, projection)
    assert (got := projection.view.get_session(session_id)) and got.down_since is None

    app.record_disconnected(uuid, "connection_lost", "dropped")
    catch_up(app, projection)
    first = projection.view.get_session(session_id)
    assert first is not None and first.down_since is not None
    # Check: a retry, a second loss and an operator's reconnect keep the first time.
    app.retry(uuid)
    app.record_disconnected(uuid, "connection_lost", "again")
    app.reconnect(session_id, ADMIN_ACTOR)
    catch_up(app, projection)
    again = projection.view.get_session(session_id)
    assert again is not None and again.down_since == first.down_since
    assert again.updated_at > first.down_since

    app.record_connected(uuid, JID, "Ann")
    catch_up(app, projection)
    back = projection.view.get_session(session_id)
    assert back is not None and back.down_since is None


def test_stopping_a_down_session_clears_down_since() -> None:
    app = popo_app()
    projection, session_id, uuid = connected(app, JID)
    app.record_disconnected(uuid, "connection_lost", "dropped")
    app.stop(session_id, ADMIN_ACTOR)
    catch_up(app, projection)
    stopped = projection.view.get_session(session_id)
    assert stopped is not None and stopped.down_since is None


# -- sessions down ----------------------------------------------------------------------------


def test_only_sessions_meant_to_run_and_not_connected_count_as_down() -> None:
    since = NOW - timedelta(minutes=30)
    assert down_seconds(down_for(30), NOW) == 1800
    assert down_seconds(row("up", down_since=since), NOW) is None  # connected again
    assert down_seconds(row("new", status="connecting"), NOW) is None  # never lost
    stopped = down_for(30, desired="stopped")
    assert down_seconds(stopped, NOW) is None
    # A clock behind the event's never gives a negative age.
    assert down_seconds(down_for(-1), NOW) == 0


def test_sessions_down_are_counted_past_each_threshold_and_the_oldest_is_aged() -> None:
    rows = [
        down_for(3),
        down_for(16, status="connecting"),  # retrying: still down
        down_for(61),
        down_for(2000, status="expired"),
        down_for(500, desired="deleted"),  # not counted
        down_for(900, desired="stopped"),  # not counted
        row("fine"),
    ]
    samples = scrape(rows)
    counts = {
        minutes: samples[("sessiond_sessions_down_longer_than", (("minutes", str(minutes)),))]
        for minutes in DOWN_MINUTES
    }
    assert counts == {5: 3, 15: 3, 60: 2, 360: 1, 1440: 1}
    assert samples[("sessiond_sessions_down_oldest_seconds", ())] == 2000 * 60


def test_no_session_down_gives_zeros_on_every_series() -> None:
    samples = scrape([row("fine")])
    for minutes in DOWN_MINUTES:
        assert samples[("sessiond_sessions_down_longer_than", (("minutes", str(minutes)),))] == 0
    assert samples[("sessiond_sessions_down_oldest_seconds", ())] == 0


def test_the_series_do_not_grow_with_the_sessions() -> None:
    few = scrape([down_for(20), row("fine")])
    many = scrape([down_for(n) for n in range(1, 3000)] + [row(f"ok{n}") for n in range(3000)])
    assert set(few) == set(many)


# -- message counters ---------------------------------------------------------------------


def test_message_and_reconnect_counters_keep_what_deleted_sessions_counted() -> None:
    live = row("live", messages_sent=5, messages_failed=2, reconnects=1)
    gone = row("gone", messages_sent=7, messages_failed=3, reconnects=4, desired="deleted")
    before = scrape([live, msgspec.structs.replace(gone, desired="running")])
    after = scrape([live, gone])
    for name, labels in [
        ("sessiond_messages_total", (("direction", "outbound"), ("status", "sent"))),
        ("sessiond_messages_total", (("direction", "outbound"), ("status", "failed"))),
        ("sessiond_reconnects_total", ()),
    ]:
        assert after[(name, labels)] == before[(name, labels)]
    failed = (("direction", "outbound"), ("status", "failed"))
    assert after[("sessiond_messages_total", failed)] == 5
    # Gauges are of the live sessions only.
    assert after[("sessiond_sessions", (("status", "connected"),))] == 1


# -- webhooks and requests ------------------------------------------------------------------


def test_webhook_endpoints_by_state_failing_and_the_longest_failure() -> None:
    health = EndpointHealth(
        enabled=4, disabled=2, failing=3, oldest_failing_since=NOW - timedelta(minutes=20)
    )
    samples = scrape([], Scrape(now=NOW, lags={}, webhooks=health))
    assert samples[("sessiond_webhook_endpoints", (("state", "enabled"),))] == 4
    assert samples[("sessiond_webhook_endpoints", (("state", "disabled"),))] == 2
    assert samples[("sessiond_webhook_endpoints_failing", ())] == 3
    assert samples[("sessiond_webhook_endpoint_failing_seconds_max", ())] == 1200
    quiet = scrape([], Scrape(now=NOW, lags={}))
    assert quiet[("sessiond_webhook_endpoint_failing_seconds_max", ())] == 0
    assert quiet[("sessiond_webhook_endpoints_failing", ())] == 0


def test_near_the_limit_is_a_tenth_of_the_minute_left_or_less() -> None:
    assert near_limit(0, 1) and near_limit(1, 10) and near_limit(10, 100)
    assert not near_limit(2, 10) and not near_limit(11, 100) and not near_limit(1, 9)


async def test_the_rate_limiter_counts_requests_refused_and_near_the_limit() -> None:
    limiter = SessionRateLimiter()
    decisions = [await limiter.hit("sess_a", 10) for _ in range(12)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
    # Remaining 1 after the ninth request, 0 after the tenth: both near; two refused.
    assert (limiter.near_limit, limiter.limited) == (2, 2)
    await limiter.hit("sess_b", 100)
    assert (limiter.near_limit, limiter.limited) == (2, 2)
    samples = scrape(
        [],
        Scrape(
            now=NOW,
            lags={},
            requests_limited=limiter.limited,
            requests_near_limit=limiter.near_limit,
        ),
    )
    assert samples[("sessiond_session_requests_limited_total", ())] == 2
    assert samples[("sessiond_session_requests_near_limit_total", ())] == 2


def test_open_alerts_are_counted_by_condition_with_every_condition_listed() -> None:
    samples = scrape([], Scrape(now=NOW, lags={}, alerts_open={"quota_low": 2, "silent": 1}))
    assert samples[("sessiond_alerts_open", (("condition", "quota_low"),))] == 2
    assert samples[("sessiond_alerts_open", (("condition", "silent"),))] == 1
    assert samples[("sessiond_alerts_open", (("condition", "disconnected"),))] == 0
    quiet = scrape([], Scrape(now=NOW, lags={}))
    assert {labels for name, labels in quiet if name == "sessiond_alerts_open"} == {
        (("condition", condition),) for condition in CONDITIONS
    }
