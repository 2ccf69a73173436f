"""The rules the sender and the worker's deadlines follow, apart from their threads."""

from __future__ import annotations

import pytest

from domain.policy import (
    DEADLINE_RULES,
    SendFailure,
    SendPolicy,
    SendVerdict,
    deadline_rule,
    gives_up,
)
from domain.values import DeadlineKind, FailureReason


def test_a_send_that_finds_the_link_down_waits_for_the_connection_and_spends_no_try() -> None:
    policy = SendPolicy(attempts=2)
    for tries in (1, 2, 50):
        assert policy.after(SendFailure.NOT_CONNECTED, tries) == SendVerdict(
            wait_for_connection=True
        )


def test_a_recipient_refused_for_good_fails_the_message_at_once() -> None:
    verdict = SendPolicy().after(SendFailure.REJECTED, 1)
    assert verdict == SendVerdict(fail=FailureReason.REJECTED)


def test_a_transient_failure_is_tried_again_after_a_doubling_pause_then_fails() -> None:
    policy = SendPolicy(attempts=6)
    pauses = [policy.after(SendFailure.TRANSIENT, tries).retry_in for tries in range(1, 6)]
    assert pauses == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.after(SendFailure.TRANSIENT, 6) == SendVerdict(fail=FailureReason.SEND_FAILED)
    # About two minutes of tries in all before one bad message stops blocking the queue.
    assert sum(p for p in pauses if p is not None) == 62.0


def test_the_pause_is_capped() -> None:
    policy = SendPolicy()
    assert [policy.pause(n) for n in (1, 5, 6, 7, 40)] == [2.0, 32.0, 60.0, 60.0, 60.0]
    assert SendPolicy(first_pause=0.5, longest_pause=3.0).pause(4) == 3.0


@pytest.mark.parametrize("kind", list(DeadlineKind))
def test_every_deadline_kind_has_a_rule(kind: DeadlineKind) -> None:
    assert deadline_rule(kind.value) is DEADLINE_RULES[kind]


def test_only_a_deleted_sessions_logout_runs_on_a_worker_that_does_not_hold_it() -> None:
    anywhere = {kind for kind, rule in DEADLINE_RULES.items() if not rule.holder_only}
    assert anywhere == {DeadlineKind.LOGOUT}


def test_an_unknown_kind_has_no_rule() -> None:
    assert deadline_rule("from_a_later_release") is None


def test_a_deadline_that_keeps_failing_is_given_up_after_its_claims() -> None:
    rule = deadline_rule(DeadlineKind.RETRY)
    assert rule is not None
    assert not gives_up(rule, rule.max_claims - 1)
    assert gives_up(rule, rule.max_claims)
