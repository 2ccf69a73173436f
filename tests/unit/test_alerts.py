"""Alert rules: the pure policy (what each condition observes, when an alert fires and
resolves), the rule aggregate, and evaluation by several evaluators at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError

from application.alerting import (
    EndpointFacts,
    Facts,
    Observation,
    RuleSpec,
    SessionFacts,
    decide,
    observe,
    quota_percent,
)
from application.alerts import AlertEvaluator, AlertRuleNotFound, Alerts, AlertSources, rule_uuid
from application.webhooks import WebhookNotFound, webhook_uuid
from domain.alerts import AlertRule, check_rule, public_rule_id
from domain.errors import InvalidValue
from domain.webhook import public_webhook_id
from projections.webhooks import webhook_body
from tests.unit.helpers import popo_app

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
S1, S2 = "sess_" + "1" * 32, "sess_" + "2" * 32


def session(session_id: str = S1, **changes: object) -> SessionFacts:
    fields: dict[str, object] = {
        "session_id": session_id,
        "status": "connected",
        "running": True,
        "linked": True,
        "down_since": None,
        "restriction_kind": None,
        "silent": False,
        "queue_depth": 0,
    }
    return SessionFacts(**(fields | changes))  # type: ignore[arg-type]


def seen(subject: str, breaching: bool, value: float = 1) -> Observation:
    return Observation(subject, subject, value, breaching)


# -- decide -----------------------------------------------------------------------------------


def test_an_alert_fires_when_its_condition_holds_and_none_is_open() -> None:
    decisions = decide(set(), [seen(S1, True), seen(S2, False)])
    assert [o.subject for o in decisions.fire] == [S1]
    assert decisions.resolve == []


def test_an_open_alert_is_never_fired_again_while_its_condition_holds() -> None:
    decisions = decide({S1}, [seen(S1, True, 5)])
    assert decisions.fire == [] and decisions.resolve == []


def test_an_open_alert_resolves_when_its_condition_clears_with_the_value_seen() -> None:
    decisions = decide({S1}, [seen(S1, False, 0)])
    assert decisions.resolve == [(S1, 0, "cleared")] and decisions.fire == []


def test_an_open_alert_whose_subject_is_gone_resolves() -> None:
    assert decide({S2}, [seen(S1, False)]).resolve == [(S2, None, "gone")]


# -- observe ----------------------------------------------------------------------------------


def test_disconnected_fires_only_after_the_threshold_and_only_for_linked_running_sessions() -> None:
    rule = RuleSpec("disconnected", 5)
    down = NOW - timedelta(minutes=6)
    facts = Facts(
        sessions=[
            session(S1, status="disconnected", down_since=down),
            session(S2, status="disconnected", down_since=NOW - timedelta(minutes=4)),
            session("sess_" + "3" * 32, status="disconnected", down_since=down, running=False),
            session("sess_" + "4" * 32, status="connecting", down_since=down, linked=False),
        ]
    )
    breaching = [o.subject for o in observe(rule, facts, NOW) if o.breaching]
    assert breaching == [S1]


def test_a_reconnecting_session_counts_as_down_since_it_was_last_connected() -> None:
    facts = Facts(sessions=[session(status="connecting", down_since=NOW - timedelta(minutes=2))])
    (seen_now,) = observe(RuleSpec("disconnected", 1), facts, NOW)
    assert seen_now.breaching and seen_now.value == 2


@pytest.mark.parametrize(
    ("rule", "facts", "breaching"),
    [
        (RuleSpec("qr_expired", None), session(status="expired"), True),
        (RuleSpec("qr_expired", None), session(status="connecting"), False),
        (RuleSpec("restricted", None), session(restriction_kind="logged_out"), True),
        (
            RuleSpec("restricted", None, kind="temporarily_banned"),
            session(restriction_kind="logged_out"),
            False,
        ),
        (RuleSpec("silent", None), session(silent=True), True),
        (RuleSpec("queue_depth", 10), session(queue_depth=10), False),
        (RuleSpec("queue_depth", 10), session(queue_depth=11), True),
    ],
)
def test_each_session_condition_reads_its_own_fact(
    rule: RuleSpec, facts: SessionFacts, breaching: bool
) -> None:
    (seen_now,) = observe(rule, Facts(sessions=[facts]), NOW)
    assert seen_now.breaching is breaching


def test_messages_failing_counts_within_the_rule_s_window() -> None:
    asked: list[datetime] = []

    def failed(session_id: str, since: datetime) -> int:
        asked.append(since)
        return 3

    facts = Facts(sessions=[session()], failed_since=failed)
    assert observe(RuleSpec("messages_failing", 3, window=15), facts, NOW)[0].breaching
    assert not observe(RuleSpec("messages_failing", 4, window=15), facts, NOW)[0].breaching
    assert asked[0] == NOW - timedelta(minutes=15)


def test_quota_low_fires_below_the_share_left_and_never_without_a_quota() -> None:
    assert quota_percent(100, 5, None, None) == 5
    assert quota_percent(100, 50, 1000, 20) == 2
    assert quota_percent(None, None, None, None) is None
    low = Facts(sessions=[session()], quota_left=lambda _s: 5.0)
    none = Facts(sessions=[session()], quota_left=lambda _s: None)
    assert observe(RuleSpec("quota_low", 10), low, NOW)[0].breaching
    assert not observe(RuleSpec("quota_low", 10), none, NOW)[0].breaching


def test_webhook_failing_fires_on_failures_in_a_row_or_a_disabled_endpoint() -> None:
    endpoints = [
        EndpointFacts("wh_a", None, True, None, 2),
        EndpointFacts("wh_b", None, True, None, 3),
        EndpointFacts("wh_c", S2, False, "410 Gone", 0),
    ]
    seen_now = observe(RuleSpec("webhook_failing", 3), Facts([], endpoints), NOW)
    assert [o.subject for o in seen_now if o.breaching] == ["wh_b", "wh_c"]
    mine = observe(RuleSpec("webhook_failing", 3, session_id=S2), Facts([], endpoints), NOW)
    assert [o.subject for o in mine] == ["wh_c"]


def test_a_session_rule_watches_its_session_only() -> None:
    facts = Facts(sessions=[session(S1, silent=True), session(S2, silent=True)])
    assert [o.subject for o in observe(RuleSpec("silent", None, session_id=S2), facts, NOW)] == [S2]


@pytest.mark.parametrize(
    ("condition", "threshold", "window", "kind", "field"),
    [
        ("nope", None, None, None, "condition"),
        ("disconnected", None, None, None, "threshold"),
        ("silent", 3, None, None, "threshold"),
        ("quota_low", 101, None, None, "threshold"),
        ("messages_failing", 1, 0, None, "windowMinutes"),
        ("queue_depth", 1, 5, None, "windowMinutes"),
        ("restricted", None, None, "sleepy", "kind"),
        ("silent", None, None, "logged_out", "kind"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_field(
    condition: str, threshold: float | None, window: int | None, kind: str | None, field: str
) -> None:
    with pytest.raises(InvalidValue, match=f"^{field}:"):
        check_rule(condition, threshold, window, kind)


# -- the aggregate and the evaluator ------------------------------------------------------------


class FixedSources(AlertSources):
    def __init__(self, facts: Facts) -> None:
        self.value = facts

    def facts(self, now: datetime) -> Facts:
        return self.value


def test_firing_and_resolving_are_events_of_the_rule_and_become_alert_webhooks() -> None:
    app = popo_app()
    rule = Alerts(app).create("down", RuleSpec("disconnected", 1), "admin")
    sources = FixedSources(
        Facts([session(status="disconnected", down_since=NOW - timedelta(minutes=3))])
    )
    evaluator = AlertEvaluator(app, sources, clock=lambda: NOW)
    # Check it fires once, however often it is evaluated.
    assert evaluator.tick() == 1
    assert evaluator.tick() == 0
    assert [a.subject for a in Alerts(app).open()] == [S1]
    assert Alerts(app).open(S2) == []
    # Check it resolves once the session is connected again.
    sources.value = Facts([session()])
    assert evaluator.tick() == 1
    assert Alerts(app).open() == []
    events = list(app.events.get(rule.id))
    fired, resolved = [e for e in events if isinstance(e, AlertRule.Fired | AlertRule.Resolved)]
    assert isinstance(fired, AlertRule.Fired) and fired.value == 3 and fired.threshold == 1
    assert isinstance(resolved, AlertRule.Resolved) and resolved.cause == "cleared"
    firing, cleared = webhook_body(fired), webhook_body(resolved)
    assert firing is not None and firing["type"] == "alert.firing"
    assert firing["data"]["sessionId"] == S1 and firing["data"]["condition"] == "disconnected"
    assert cleared is not None and cleared["type"] == "alert.resolved"
    assert cleared["data"]["firedAt"] == firing["data"]["firedAt"]


def test_deleting_a_rule_resolves_its_open_alerts() -> None:
    app = popo_app()
    rule = Alerts(app).create("silent", RuleSpec("silent", None), "admin")
    AlertEvaluator(app, FixedSources(Facts([session(silent=True)])), lambda: NOW).tick()
    Alerts(app).delete("alr_" + rule.id.hex, "admin")
    last = list(app.events.get(rule.id))[-2]
    assert isinstance(last, AlertRule.Resolved) and last.cause == "rule_deleted"
    assert Alerts(app).rules() == [] and Alerts(app).open() == []


def test_two_evaluators_that_decide_the_same_firing_record_it_once() -> None:
    app = popo_app()
    rule = Alerts(app).create("silent", RuleSpec("silent", None), "admin")
    facts = Facts([session(silent=True)])
    # Check the mechanism: two copies of the rule at the same version cannot both be saved.
    first: AlertRule = app.repository.get(rule.id)
    second: AlertRule = app.repository.get(rule.id)
    assert first.fire(S1, S1, 1, "", NOW) and second.fire(S1, S1, 1, "", NOW)
    app.save(first)
    with pytest.raises(IntegrityError):
        app.save(second)
    # Check evaluators racing in threads, each from its own load, record one firing in all.
    other = Alerts(app).create("silent too", RuleSpec("silent", None, session_id=S2), "admin")
    facts = Facts([session(S2, silent=True)])
    barrier = threading.Barrier(8)
    recorded: list[int] = []

    def race() -> None:
        loaded: AlertRule = app.repository.get(other.id)
        barrier.wait()
        recorded.append(
            AlertEvaluator(app, FixedSources(facts), lambda: NOW).evaluate(loaded, facts, NOW)
        )

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(recorded) == 1
    fired = [e for e in app.events.get(other.id) if isinstance(e, AlertRule.Fired)]
    assert len(fired) == 1


def test_changing_what_a_rule_watches_resolves_its_open_alerts() -> None:
    app = popo_app()
    rule = Alerts(app).create("deep", RuleSpec("queue_depth", 5), "admin")
    sources = FixedSources(Facts([session(queue_depth=9)]))
    AlertEvaluator(app, sources, lambda: NOW).tick()
    public = "alr_" + rule.id.hex
    Alerts(app).change(public, "admin", name="renamed")  # a new name only: stays open
    assert len(Alerts(app).open()) == 1
    Alerts(app).change(public, "admin", threshold=20)
    assert Alerts(app).open() == []
    assert AlertEvaluator(app, sources, lambda: NOW).tick() == 0  # 9 is not above 20


def test_a_replay_to_a_deployment_endpoint_resends_an_alert_that_names_no_session() -> None:
    from typing import Any, cast

    from projections.replay import replay_page

    app = popo_app()
    Alerts(app).create("hooks", RuleSpec("webhook_failing", 1), "admin")
    facts = Facts([], [EndpointFacts("wh_" + "a" * 32, None, False, "410 Gone", 0)])
    assert AlertEvaluator(app, FixedSources(facts), lambda: NOW).tick() == 1
    endpoint = {"webhook_id": "wh_" + "b" * 32, "session_id": None, "events": ["alert.firing"]}
    window = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    page = replay_page(
        app, cast("Any", None), endpoint=endpoint, window=window, cursor=None, limit=100
    )
    (delivery,) = page.deliveries
    # Check the delivery's session is a string (the outbox's column is NOT NULL), empty here.
    assert (delivery.event_type, delivery.session_id) == ("alert.firing", "")


def test_public_ids_of_rules_and_webhooks_give_their_uuid_back() -> None:
    uuid = uuid4()
    assert rule_uuid(public_rule_id(uuid)) == uuid
    assert webhook_uuid(public_webhook_id(uuid)) == uuid


@pytest.mark.parametrize(
    "hexpart",
    ["nope", "0" * 31, "0" * 33, "g" * 32, "{" + "0" * 30 + "}", "0" * 8 + "-" + "0" * 23],
)
def test_a_malformed_rule_or_webhook_id_is_not_found(hexpart: str) -> None:
    with pytest.raises(AlertRuleNotFound):
        rule_uuid("alr_" + hexpart)
    with pytest.raises(WebhookNotFound):
        webhook_uuid("wh_" + hexpart)
    with pytest.raises(AlertRuleNotFound):
        rule_uuid("wh_" + "0" * 32)  # another kind's id
