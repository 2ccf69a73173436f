"""Which address the failure throttle counts: X-Forwarded-For only through trusted proxies."""

from __future__ import annotations

import ipaddress
from typing import Any

from api.ratelimit import client_address

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"))


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 51000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() -> None:
    assert client_address(scope("203.0.113.9", "198.51.100.1"), ()) == "203.0.113.9"
    assert client_address(scope("203.0.113.9", "198.51.100.1"), PROXIES) == "203.0.113.9"
    assert client_address(scope(None), ()) == "unknown"
    assert client_address(scope("testclient"), ()) == "testclient"


def test_through_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() -> None:
    assert client_address(scope("192.0.2.7", "198.51.100.1"), PROXIES) == "198.51.100.1"
    # Two proxies: the second appended the first's address.
    assert client_address(scope("192.0.2.7", "198.51.100.1, 10.1.1.1"), PROXIES) == ("198.51.100.1")
    # What the client wrote itself, to the left, is never believed.
    assert client_address(scope("192.0.2.7", "10.9.9.9, 6.6.6.6", "198.51.100.1"), PROXIES) == (
        "198.51.100.1"
    )
    # Ports and brackets as some proxies write them.
    assert client_address(scope("10.0.0.1", "198.51.100.1:4711"), PROXIES) == "198.51.100.1"
    assert client_address(scope("10.0.0.1", "[2001:db8::1]:443"), PROXIES) == "2001:db8::/64"


def test_an_unreadable_chain_stops_at_the_last_proxy_that_can_be_read() -> None:
    assert client_address(scope("192.0.2.7", "198.51.100.1, garbage"), PROXIES) == "192.0.2.7"
    assert client_address(scope("192.0.2.7"), PROXIES) == "192.0.2.7"
    assert client_address(scope("192.0.2.7", "10.0.0.3"), PROXIES) == "10.0.0.3"


def test_an_ipv6_client_counts_as_its_slash_64_and_a_mapped_ipv4_as_ipv4() -> None:
    one = client_address(scope("2001:db8:1:2::1"), ())
    other = client_address(scope("2001:db8:1:2:ffff::9"), ())
    assert one == other == "2001:db8:1:2::/64"
    assert client_address(scope("2001:db8:1:3::1"), ()) != one
    assert client_address(scope("::ffff:198.51.100.1"), ()) == "198.51.100.1"
