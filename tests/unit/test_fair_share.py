"""The sharing of webhook delivery slots between endpoints and tenants (a pure decision)."""

from __future__ import annotations

from application.fairness import Load, cap, fair_share, water_fill


def test_water_filling_gives_each_its_demand_or_an_even_split_of_what_is_left() -> None:
    assert water_fill(10, {"a": 1, "b": 100, "c": 100}) == {"a": 1, "b": 4, "c": 5}
    assert water_fill(10, {"a": 2, "b": 3}) == {"a": 2, "b": 3}
    assert sum(water_fill(7, dict.fromkeys(range(5), 100)).values()) == 7


def test_an_endpoint_alone_never_takes_more_than_its_cap() -> None:
    grants = fair_share(64, {"slow": Load("s1", in_flight=0, waiting=10_000)}, max_share=0.25)
    assert grants == {"slow": 16}
    assert cap(64, 0.25) == 16
    assert cap(2, 0.25) == 1  # never none


def test_a_slow_endpoint_holding_its_cap_gets_nothing_more_while_others_are_served() -> None:
    loads = {
        "slow": Load("s1", in_flight=16, waiting=10_000),
        "quick": Load("s2", in_flight=0, waiting=3),
    }
    assert fair_share(64, loads, max_share=0.25) == {"quick": 3}


def test_a_newcomer_gets_its_share_even_when_the_slow_one_came_first() -> None:
    loads = {
        "slow": Load("s1", in_flight=40, waiting=10_000),  # held from before a cap was lower
        "quick": Load("s2", in_flight=0, waiting=100),
    }
    grants = fair_share(64, loads, max_share=0.5)
    assert "slow" not in grants
    assert grants["quick"] == 24  # every free slot, within its cap of 32


def test_a_tenant_with_many_endpoints_gets_no_more_than_a_tenant_with_one() -> None:
    loads = {f"many-{n}": Load("greedy", 0, 100) for n in range(20)}
    loads["one"] = Load("modest", 0, 100)
    grants = fair_share(16, loads, max_share=1.0)
    greedy = sum(v for k, v in grants.items() if k.startswith("many-"))
    assert greedy == 8
    assert grants["one"] == 8


def test_no_more_is_granted_than_there_are_free_slots() -> None:
    loads = {n: Load(f"t{n}", in_flight=3, waiting=50) for n in range(10)}
    grants = fair_share(32, loads, max_share=0.25)
    assert sum(grants.values()) <= 32 - 30
    assert fair_share(32, {}, 0.25) == {}
