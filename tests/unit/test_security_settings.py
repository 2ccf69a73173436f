"""Settings that would break revocation, the failure throttle or fair sharing: refused at
start-up with one line, or defaults that keep them."""

from __future__ import annotations

import ipaddress

import pytest

from infra.settings import Settings, SettingsError


def test_a_staleness_window_a_revocation_cannot_outwait_is_refused() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SESSIOND_STALE_AFTER": "5", "SESSIOND_WRITE_WAIT_TIMEOUT": "5"})
    assert str(refused.value) == (
        "SESSIOND_STALE_AFTER=5 needs SESSIOND_WRITE_WAIT_TIMEOUT > 6 (it is 5): "
        "a revocation must be able to outwait an API process that stopped refreshing"
    )
    assert "\n" not in str(refused.value)
    # The margin counts: a write wait equal to the window plus the margin is still too short.
    with pytest.raises(SettingsError):
        Settings.from_env({"SESSIOND_STALE_AFTER": "2", "SESSIOND_WRITE_WAIT_TIMEOUT": "3"})
    assert Settings.from_env({"SESSIOND_STALE_AFTER": "2", "SESSIOND_WRITE_WAIT_TIMEOUT": "3.1"})


def test_a_staleness_window_shorter_than_the_poll_is_refused() -> None:
    with pytest.raises(SettingsError, match="must be longer than SESSIOND_POLL_INTERVAL=2"):
        Settings.from_env({"SESSIOND_STALE_AFTER": "2", "SESSIOND_POLL_INTERVAL": "2"})


def test_the_defaults_keep_the_guarantee() -> None:
    settings = Settings.from_env({})
    assert settings.stale_after + 1 < settings.write_wait_timeout
    assert settings.auth_failure_limit == 10
    assert settings.trusted_proxies == ()


def test_trusted_proxies_are_addresses_or_ranges() -> None:
    settings = Settings.from_env({"SESSIOND_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1,"})
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(SettingsError, match=r"'proxy\.local' is not an IP address or a CIDR"):
        Settings.from_env({"SESSIOND_TRUSTED_PROXIES": "10.0.0.1, proxy.local"})
    with pytest.raises(SettingsError, match="AUTH_FAILURE_LIMIT"):
        Settings.from_env({"SESSIOND_AUTH_FAILURE_LIMIT": "0"})


@pytest.mark.parametrize(
    ("env", "readers", "per_session"),
    [
        ({}, 2, 1),
        ({"SESSIOND_EXPENSIVE_READERS": "1"}, 1, 1),
        ({"SESSIOND_EXPENSIVE_READERS": "8"}, 8, 4),
        ({"SESSIOND_EXPENSIVE_READERS": "8", "SESSIOND_EXPENSIVE_READS_PER_SESSION": "8"}, 8, 8),
    ],
)
def test_one_session_holds_at_most_half_the_reader_processes_by_default(
    env: dict[str, str], readers: int, per_session: int
) -> None:
    settings = Settings.from_env(env)
    assert (settings.expensive_readers, settings.expensive_reads_per_session) == (
        readers,
        per_session,
    )


@pytest.mark.parametrize(
    ("env", "refusal"),
    [
        ({"SESSIOND_RETRY_BASE": "soon"}, "SESSIOND_RETRY_BASE='soon': expected a number"),
        ({"SESSIOND_RETRY_BASE": "0"}, "SESSIOND_RETRY_BASE='0': expected between 0.01 and 3600.0"),
        (
            {"SESSIOND_DEFAULT_RATE_LIMIT": "1.5"},
            "SESSIOND_DEFAULT_RATE_LIMIT='1.5': expected a whole number",
        ),
        (
            {"SESSIOND_DEFAULT_RATE_LIMIT": "0"},
            "SESSIOND_DEFAULT_RATE_LIMIT='0': expected between 1 and 100000",
        ),
    ],
)
def test_a_number_that_does_not_parse_or_is_out_of_bounds_is_refused_with_one_line(
    env: dict[str, str], refusal: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert str(refused.value) == refusal


def test_numbers_within_their_bounds_are_read_and_unset_ones_keep_their_default() -> None:
    given = {"SESSIOND_RETRY_BASE": "0.5", "SESSIOND_DEFAULT_RATE_LIMIT": "100000"}
    settings = Settings.from_env(given)
    assert (settings.retry_base, settings.default_requests_per_minute) == (0.5, 100_000)
    defaults = Settings.from_env({})
    assert (defaults.retry_base, defaults.default_requests_per_minute) == (2.0, 600)
