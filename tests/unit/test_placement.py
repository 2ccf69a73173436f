"""The fair share of each gateway worker and the hand-overs that reach it."""

from __future__ import annotations

from application.placement import share, to_hand_over


def test_shares_differ_by_one_at_most_and_sum_to_what_is_wanted() -> None:
    for wanted in range(0, 40):
        for n in range(1, 6):
            workers = [f"w{i}" for i in range(n)]
            shares = [share(w, workers, wanted) for w in workers]
            assert sum(shares) == wanted
            assert max(shares) - min(shares) <= 1


def test_a_worker_not_yet_seen_live_counts_itself() -> None:
    assert share("new", ["a", "b", "c"], 60) == 15


def test_a_fourth_worker_joining_takes_five_from_each_of_three() -> None:
    counts = {"a": 20, "b": 20, "c": 20, "d": 0}
    assert [to_hand_over(w, 20, counts, 60, 50) for w in "abc"] == [5, 5, 5]
    assert to_hand_over("d", 0, counts, 60, 50) == 0


def test_hand_overs_are_bounded_per_tick() -> None:
    assert to_hand_over("a", 20, {"a": 20, "b": 0}, 20, 3) == 3


def test_nothing_is_handed_over_when_nobody_lacks_sessions() -> None:
    # "a" is above its share (13) only because a session was stopped meanwhile.
    assert to_hand_over("a", 14, {"a": 14, "b": 13}, 26, 50) == 0


def test_a_spread_within_one_is_left_alone() -> None:
    counts = {"a": 16, "b": 15, "c": 15, "d": 15}
    assert all(to_hand_over(w, counts[w], counts, 61, 50) == 0 for w in counts)
