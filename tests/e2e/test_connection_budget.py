"""Each process holds a fixed few PostgreSQL connections, idle and under load, counted in
``pg_stat_activity`` by the names the processes give them (``sessiond-<role>:pool``,
``sessiond-<role>:listener``, a worker's ``sessiond-worker:<id>``, an API process's reader
processes ``sessiond-<role>:reader``).

Budgets, idle: ``serve`` 12 in all (its HTTP process and its child worker), an ``api`` 4, a
``projector`` 8, a ``worker`` 6; busy, an API process's 2 reader processes add a connection
each while they run expensive reads (``serve`` 14, ``api`` 6). The device store's pool of a
neonize worker is counted apart (``sessiond-device-store``,
tests/e2e/test_neonize_many_offline.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from tests.e2e.census import (
    BUDGETS,
    BUSY_BUDGETS,
    OURS,
    PROJECTIONS,
    SERVE_NAMES,
    Census,
    by_process,
    settled,
    wait_for,
)
from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.steps import scan_shown_qr


def assert_clean(*processes: Sessiond) -> None:
    """No process logged an error with its traceback (a pool that ran dry, a failed save)."""
    for process in processes:
        log = process.log_path.read_text(errors="replace")
        for bad in ("Traceback", "PoolTimeout", "prepared statement"):
            assert bad not in log, (process.command, log[-3000:])


def lock_holders(database_url: str) -> dict[str, int]:
    """The advisory locks held, by the name of the connection that holds them."""
    with psycopg.connect(database_url, autocommit=True, application_name=OURS) as conn:
        rows = conn.execute(
            "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a "
            "USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
            "AND a.datname = current_database() GROUP BY 1"
        ).fetchall()
    return {str(name): int(n) for name, n in rows}


def exercise(api: Sessiond, sessions: int = 12) -> None:
    """Some of everything, many requests at once: create, QR, scan, status, history, send,
    keys issued and revoked, a session deleted."""
    with (
        api.client(limits=httpx.Limits(max_connections=32)) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        created = list(pool.map(lambda n: create_session(client, f"Budget {n}"), range(sessions)))

        def link(session: dict[str, Any]) -> None:
            scan_shown_qr(client, session)
            sid, key = session["sessionId"], key_of(session)
            for _ in range(10):
                assert client.get(f"/sessions/{sid}/status", headers=key).status_code == 200
            assert client.get(f"/sessions/{sid}/events", headers=key).status_code == 200
            assert client.get(f"/sessions/{sid}/uptime", headers=key).status_code == 200
            sent = client.post(
                f"/sessions/{sid}/messages",
                json={"to": "+14155550123", "text": "hello"},
                headers=key,
            )
            assert sent.status_code == 202, sent.text
            assert client.get(f"/sessions/{sid}/messages", headers=key).status_code == 200
            extra = client.post(f"/sessions/{sid}/keys", json={"label": "extra"}, headers=key)
            assert extra.status_code == 201, extra.text
            revoked = client.delete(f"/sessions/{sid}/keys/{extra.json()['keyId']}", headers=key)
            assert revoked.status_code == 204, revoked.text

        list(pool.map(link, created))
        gone = client.delete(f"/sessions/{created[0]['sessionId']}", headers=ADMIN)
        assert gone.status_code == 204, gone.text
        assert client.get("/sessions", headers=ADMIN).status_code == 200


def test_serve_holds_at_most_12_connections_idle_and_14_under_load(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    serve = start("serve", sessiond_env)
    wait_for(settled(database_url), "every projection elected and the worker up")
    census = Census(database_url)

    # Check the idle process: one listener and one pool in each of its two processes.
    idle = census.now()
    assert set(by_process(idle)) <= set(SERVE_NAMES), idle
    assert idle["sessiond-serve:listener"] == 1, idle
    assert idle["sessiond-worker:listener"] == 1, idle
    assert sum(idle.values()) <= BUDGETS["serve"], idle
    assert not [name for name in idle if name.endswith(":reader")], idle
    assert lock_holders(database_url) == {"sessiond-serve:listener": PROJECTIONS}

    # Check the budget holds while every role is busy, and after.
    with census.watching():
        exercise(serve)
    assert census.samples > 10
    assert census.peak_total <= BUSY_BUDGETS["serve"], census.peak
    after = census.now()
    assert set(by_process(after)) <= set(SERVE_NAMES), after
    assert sum(after.values()) <= BUSY_BUDGETS["serve"], after
    assert_clean(serve)
    print(f"serve: idle {dict(idle)}, peak {dict(census.peak)}, after {dict(after)}")


def test_api_projector_and_worker_apart_each_keep_their_budget(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    api = start("api", sessiond_env)
    projector = start("projector", sessiond_env)
    worker = start("worker", sessiond_env)
    wait_for(settled(database_url), "every projection elected and the worker up")
    census = Census(database_url)

    # Check each idle process: its one listener (the projector's holds every projection's
    # lock), and its pool within the budget.
    assert lock_holders(database_url) == {"sessiond-projector:listener": PROJECTIONS}
    idle = census.now()
    for role in ("api", "projector"):
        assert idle[f"sessiond-{role}:listener"] == 1, idle
    assert idle["sessiond-worker:listener"] == 1, idle
    idle_by_process = by_process(idle)
    assert set(idle_by_process) == {f"sessiond-{role}" for role in ("api", "projector", "worker")}
    for role in ("api", "projector", "worker"):
        assert idle_by_process[f"sessiond-{role}"] <= BUDGETS[role], idle

    # Check each keeps its budget while all are busy, and after.
    with census.watching():
        exercise(api)
    for role in ("api", "projector", "worker"):
        assert census.peak[f"sessiond-{role}"] <= BUSY_BUDGETS[role], census.peak
    after = by_process(census.now())
    for role in ("api", "projector", "worker"):
        assert after[f"sessiond-{role}"] <= BUSY_BUDGETS[role], after
    assert_clean(api, projector, worker)
    print(f"apart: idle {dict(idle)}, peak {dict(census.peak)}, after {dict(after)}")
