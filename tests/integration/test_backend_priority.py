"""A background process lowers the priority of its own PostgreSQL backends, and of no other
process: not another connection's backend, not a process that is no backend, not a backend
behind PgBouncer (whose process serves other clients too)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infra.postgres import priority
from infra.postgres.priority import BackendPriority
from infra.whatsapp.devicestore import DeviceStorePool

pytestmark = pytest.mark.postgres


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def may_renice(pid: int) -> bool:
    return os.geteuid() == 0 or Path(f"/proc/{pid}").stat().st_uid == os.geteuid()


def policy(level: int) -> BackendPriority:
    found = BackendPriority()
    found.niceness = level
    return found


@pytest.fixture
def bouncer(database_url: str) -> Iterator[DeviceStorePool]:
    pool = DeviceStorePool(database_url, size=1, schema="public")
    pool.start()
    yield pool
    pool.close()


def test_a_connection_lowers_its_own_backend_and_no_other(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as own,
        psycopg.connect(database_url, autocommit=True) as other,
    ):
        pid, other_pid = own.info.backend_pid, other.info.backend_pid
        start, other_start = niceness(pid), niceness(other_pid)
        target = start + 3
        if may_renice(pid):
            assert policy(target).follow(own)
            assert niceness(pid) == target
        else:  # another user's server: left as it is
            assert not policy(target).follow(own)
            assert niceness(pid) == start
        assert niceness(other_pid) == other_start
        # The match that decides it: this connection's backend, nobody else's.
        assert priority._is_own_backend(own, pid)
        assert not priority._is_own_backend(own, other_pid)
        assert not priority._is_own_backend(own, os.getpid())  # no backend at all
        # A backend already at or below the priority is not raised back.
        if may_renice(pid):
            assert policy(target - 1).follow(own)
            assert niceness(pid) == target
        # Nothing is touched while the process keeps its priority.
        assert not policy(0).follow(other)
        assert niceness(other_pid) == other_start


def test_a_backend_behind_pgbouncer_is_left_alone(bouncer: DeviceStorePool) -> None:
    with psycopg.connect(bouncer.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = row[0]
        start = niceness(backend)
        assert not policy(start + 3).follow(conn)
        assert niceness(backend) == start


def test_a_backend_it_may_not_renice_is_logged_once_and_left(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    caplog.set_level(logging.INFO, logger=priority.__name__)
    policy_of_process = policy(19)
    with (
        psycopg.connect(database_url, autocommit=True) as first,
        psycopg.connect(database_url, autocommit=True) as second,
    ):
        assert not policy_of_process.follow(first)
        assert not policy_of_process.follow(second)
    refusals = [r for r in caplog.records if "keep their CPU priority" in r.getMessage()]
    assert len(refusals) == 1
    assert "Operation not permitted" in refusals[0].getMessage()
