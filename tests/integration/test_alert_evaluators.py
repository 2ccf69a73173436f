"""Evaluators of two processes (two applications on one PostgreSQL database) evaluate the
same rules at once, over and over: each alert is recorded fired once and resolved once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from application.alerting import Facts, RuleSpec, SessionFacts
from application.alerts import AlertEvaluator, Alerts, AlertSources
from application.sessions import SessionsApplication
from domain.alerts import AlertRule
from domain.values import ADMIN_ACTOR
from infra.settings import eventsourcing_env

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SESSIONS = ["sess_" + f"{n:032x}" for n in range(1, 6)]


class Switch(AlertSources):
    """Every session queued deep, or none (flipped by the test)."""

    def __init__(self) -> None:
        self.deep = True

    def facts(self, now: datetime) -> Facts:
        depth = 50 if self.deep else 0
        return Facts(
            [
                SessionFacts(sid, "connected", True, True, None, None, False, depth)
                for sid in SESSIONS
            ]
        )


def test_two_processes_evaluating_at_once_record_each_firing_and_resolving_once(
    database_url: str,
) -> None:
    one = SessionsApplication(env=eventsourcing_env(database_url, pool_size=4))
    two = SessionsApplication(
        env={**eventsourcing_env(database_url, pool_size=4), "CREATE_TABLE": "n"}
    )
    try:
        rules = [
            Alerts(one).create(f"deep {n}", RuleSpec("queue_depth", 10), ADMIN_ACTOR)
            for n in range(3)
        ]
        source = Switch()
        evaluators = [
            AlertEvaluator(app, source, lambda: NOW) for app in (one, two) for _ in range(2)
        ]

        def rounds(evaluator: AlertEvaluator, barrier: threading.Barrier) -> None:
            for _ in range(5):
                barrier.wait()
                evaluator.tick()

        for deep in (True, False):  # fire everything, then resolve everything
            source.deep = deep
            barrier = threading.Barrier(len(evaluators))
            threads = [threading.Thread(target=rounds, args=(e, barrier)) for e in evaluators]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        for rule in rules:
            events = list(two.events.get(rule.id))
            fired = [e.subject for e in events if isinstance(e, AlertRule.Fired)]
            resolved = [e.subject for e in events if isinstance(e, AlertRule.Resolved)]
            assert sorted(fired) == SESSIONS, rule.name
            assert sorted(resolved) == SESSIONS, rule.name
        assert Alerts(two).open() == []
    finally:
        one.close()
        two.close()
