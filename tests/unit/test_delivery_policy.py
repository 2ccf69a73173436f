"""What one webhook delivery attempt leads to, apart from the dispatcher's loop."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from domain.policy import MAX_RETRY_AFTER, RETRY_DELAYS, DeliveryOutcome, DeliveryPolicy

AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_a_2xx_is_delivered(status: int) -> None:
    assert DeliveryPolicy().outcome(status, 1) == (DeliveryOutcome.DELIVERED, None)


@pytest.mark.parametrize("status", [None, 301, 400, 404, 429, 500, 503])
def test_anything_else_is_tried_again_after_the_planned_pause_with_jitter(
    status: int | None,
) -> None:
    policy = DeliveryPolicy()
    for attempts, planned in enumerate(RETRY_DELAYS, start=1):
        outcome, delay = policy.outcome(status, attempts, rng=random.Random(attempts))
        assert outcome == DeliveryOutcome.RETRY
        assert delay is not None and 0.8 * planned <= delay <= 1.2 * planned


def test_after_the_last_planned_try_the_delivery_is_dead() -> None:
    last = len(RETRY_DELAYS) + 1
    assert DeliveryPolicy().outcome(500, last) == (DeliveryOutcome.DEAD, None)


def test_410_gone_is_dead_at_once_and_disables_the_endpoint() -> None:
    policy = DeliveryPolicy()
    assert policy.outcome(410, 1) == (DeliveryOutcome.DEAD, None)
    assert policy.disabling(410, None, AT) == "the endpoint answered 410 Gone"


def test_retry_after_is_waited_for_up_to_a_day() -> None:
    policy = DeliveryPolicy()
    assert policy.outcome(503, 1, retry_after=120.0)[1] == 120.0
    assert policy.outcome(503, 1, retry_after=10 * MAX_RETRY_AFTER)[1] == MAX_RETRY_AFTER
    _, short = policy.outcome(503, 5, retry_after=1.0, rng=random.Random(0))
    assert short is not None and short >= 0.8 * RETRY_DELAYS[4]  # never shorter than planned


def test_the_scale_shrinks_every_pause() -> None:
    _, delay = DeliveryPolicy(retry_scale=0.001).outcome(500, 1, rng=random.Random(1))
    assert delay is not None and delay <= 1.2 * RETRY_DELAYS[0] * 0.001


def test_an_endpoint_failing_for_the_whole_window_is_disabled() -> None:
    policy = DeliveryPolicy(disable_after=timedelta(days=3))
    assert policy.disabling(500, None, AT) is None  # it has never failed before
    assert policy.disabling(500, AT - timedelta(days=2, hours=23), AT) is None
    reason = policy.disabling(None, AT - timedelta(days=3, hours=12), AT)
    assert reason == "failing without a success for 3.5 days"
