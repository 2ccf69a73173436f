"""How the webhook delivery slots are shared: no endpoint, and no tenant (a session with its
endpoints, or the admin's endpoints together), holds more than its fair share of them.

The shares are max-min fair ("water filling"): the slots are split evenly between the tenants
that have work, a tenant that needs less than its even split leaves the rest to the others;
within a tenant, the same between its endpoints. No tenant or endpoint ever holds more than
`max_share` of all slots, even alone: a slot held by a slow endpoint is held for up to its
time-out, and the slots it leaves free are what another tenant's next event is sent with.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Load:
    """One endpoint's deliveries: in flight now, and due but not started."""

    tenant: str
    in_flight: int
    waiting: int


def cap(capacity: int, max_share: float) -> int:
    """The most slots one tenant or endpoint may hold: `max_share` of them, at least one."""
    return max(1, math.floor(capacity * max_share))


def water_fill(capacity: int, demands: Mapping[K, int]) -> dict[K, int]:
    """Split `capacity` between `demands` max-min fairly: each gets its demand or an even
    split of what is left, whichever is less (ties in the order of the keys)."""
    shares: dict[K, int] = {}
    left = capacity
    order = sorted(demands, key=lambda key: (demands[key], str(key)))
    for n, key in enumerate(order):
        even = left // (len(order) - n)
        shares[key] = min(demands[key], even)
        left -= shares[key]
    return shares


def fair_share(capacity: int, loads: Mapping[K, Load], max_share: float = 0.25) -> dict[K, int]:
    """How many more deliveries each endpoint may start now, with `capacity` slots in all."""
    most = cap(capacity, max_share)
    demand = {key: min(most, load.in_flight + load.waiting) for key, load in loads.items()}
    tenants: dict[str, dict[K, int]] = {}
    for key, load in loads.items():
        tenants.setdefault(load.tenant, {})[key] = demand[key]
    tenant_share = water_fill(
        capacity, {tenant: min(most, sum(d.values())) for tenant, d in tenants.items()}
    )
    free = capacity - sum(load.in_flight for load in loads.values())
    grants: dict[K, int] = {}
    for tenant, endpoints in sorted(tenants.items()):
        held = sum(loads[key].in_flight for key in endpoints)
        room = max(0, tenant_share[tenant] - held)  # what the tenant may still start
        for key, share in water_fill(tenant_share[tenant], endpoints).items():
            load = loads[key]
            grant = max(0, min(share - load.in_flight, load.waiting, room, free))
            if grant:
                grants[key] = grant
                room -= grant
                free -= grant
    return grants


__all__ = ["Load", "cap", "fair_share", "water_fill"]
