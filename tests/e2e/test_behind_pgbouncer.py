"""`sessiond serve` with its pooled queries through a real PgBouncer in transaction mode
(Debian's ``pgbouncer``) and its session-bound connections (LISTEN, the projections' locks, the
worker's identity) direct, through SESSIOND_DIRECT_DATABASE_URL: a whole flow works."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.whatsapp.devicestore import DeviceStorePool
from tests.e2e.census import Census, session_bound, settled, wait_for
from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.steps import scan_shown_qr

#: PgBouncer's server connections: fewer than the pools of serve's two processes hold.
BOUNCER_SIZE = 3


@pytest.fixture
def bouncer(database_url: str) -> Iterator[DeviceStorePool]:
    """A PgBouncer in transaction mode in front of the test's database (the device store's
    launcher, on sessiond's own schema)."""
    pool = DeviceStorePool(database_url, size=BOUNCER_SIZE, schema="public")
    pool.start()
    yield pool
    pool.close()


def test_a_session_is_created_linked_read_and_revoked_through_pgbouncer(
    start: Any,
    sessiond_env: dict[str, str],
    database_url: str,
    bouncer: DeviceStorePool,
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_DATABASE_URL": bouncer.conninfo(),
        "SESSIOND_DIRECT_DATABASE_URL": database_url,
    }
    serve = start("serve", env)
    wait_for(settled(database_url), "every projection elected and the worker up")
    census = Census(database_url)
    with census.watching(), serve.client() as client:
        created = create_session(client, "Bounced")
        sid, key = created["sessionId"], key_of(created)

        # Check the worker's QR code reaches the API, and the simulated phone links it.
        assert scan_shown_qr(client, created)["status"] == "connected"
        status = client.get(f"/sessions/{sid}/status", headers=key)
        assert status.status_code == 200 and status.json()["status"] == "connected"
        sent = client.post(
            f"/sessions/{sid}/messages", json={"to": "+14155550123", "text": "hi"}, headers=key
        )
        assert sent.status_code == 202, sent.text
        history = client.get(f"/sessions/{sid}/events", headers=key)
        assert history.status_code == 200, history.text

        # Check a revoked key is refused at once, and a deleted session's key too.
        extra = client.post(f"/sessions/{sid}/keys", json={"label": "extra"}, headers=key)
        assert extra.status_code == 201, extra.text
        extra_key = {"x-api-key": extra.json()["key"]}
        assert client.get(f"/sessions/{sid}/status", headers=extra_key).status_code == 200
        revoked = client.delete(f"/sessions/{sid}/keys/{extra.json()['keyId']}", headers=key)
        assert revoked.status_code == 204, revoked.text
        assert client.get(f"/sessions/{sid}/status", headers=extra_key).status_code == 401
        deleted = client.delete(f"/sessions/{sid}", headers=ADMIN)
        assert deleted.status_code == 204, deleted.text
        assert client.get(f"/sessions/{sid}/status", headers=key).status_code == 401

    # Check the pooled queries went through PgBouncer: never more server connections than
    # its pool, while the session-bound ones stayed direct (one listener per process).
    now = census.now()
    assert now["sessiond-serve:listener"] == 1, now
    assert now["sessiond-worker:listener"] == 1, now
    pooled = sum(n for name, n in now.items() if not session_bound(name))
    assert pooled <= BOUNCER_SIZE, now
    assert census.peak_pooled <= BOUNCER_SIZE, census.peak_pooled
    assert "prepared statement" not in serve.log(), serve.log()
    print(f"through PgBouncer: now {dict(now)}, pooled peak {census.peak_pooled}")
