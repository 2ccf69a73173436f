"""SESSIOND_DIRECT_DATABASE_URL: where the session-bound connections go (a pooler apart)."""

from __future__ import annotations

import pytest

from infra.bootstrap import POOL_MAX, process_label
from infra.settings import Settings, SettingsError

BASE = {"SESSIOND_ADMIN_KEY": "test-admin-key-0123456789"}
POOLED = "postgresql://app@127.0.0.1:6432/sessiond"
DIRECT = "postgresql://app@127.0.0.1:5432/sessiond"


def test_the_direct_url_defaults_to_none_and_is_read_when_set() -> None:
    assert Settings.from_env({**BASE, "SESSIOND_DATABASE_URL": POOLED}).direct_database_url is None
    settings = Settings.from_env(
        {**BASE, "SESSIOND_DATABASE_URL": POOLED, "SESSIOND_DIRECT_DATABASE_URL": DIRECT}
    )
    assert (settings.database_url, settings.direct_database_url) == (POOLED, DIRECT)


def test_a_direct_url_needs_a_database_url_and_must_be_one() -> None:
    with pytest.raises(SettingsError, match="needs SESSIOND_DATABASE_URL"):
        Settings.from_env({**BASE, "SESSIOND_DIRECT_DATABASE_URL": DIRECT})
    with pytest.raises(SettingsError, match="SESSIOND_DIRECT_DATABASE_URL is not a PostgreSQL"):
        Settings.from_env(
            {**BASE, "SESSIOND_DATABASE_URL": POOLED, "SESSIOND_DIRECT_DATABASE_URL": "x=1 y"}
        )


def test_each_process_pool_leaves_room_for_its_listener_within_its_budget() -> None:
    budgets = {"api": 4, "projector": 8, "worker": 6}
    for role, budget in budgets.items():
        assert POOL_MAX[frozenset({role})] + 1 <= budget
    # serve: its HTTP process (api and projector) and its child worker, 12 in all
    serve = POOL_MAX[frozenset({"api", "projector"})] + 1 + POOL_MAX[frozenset({"worker"})] + 1
    assert serve <= 12
    assert process_label(frozenset({"api", "projector"})) == "serve"
    assert process_label(frozenset({"worker"})) == "worker"


def test_the_pool_size_is_the_budget_unless_set() -> None:
    assert Settings.from_env({**BASE, "SESSIOND_DATABASE_URL": POOLED}).pool_max is None
    settings = Settings.from_env(
        {**BASE, "SESSIOND_DATABASE_URL": POOLED, "SESSIOND_POOL_MAX": "9"}
    )
    assert settings.pool_max == 9
    with pytest.raises(SettingsError, match="SESSIOND_POOL_MAX"):
        Settings.from_env({**BASE, "SESSIOND_POOL_MAX": "0"})
