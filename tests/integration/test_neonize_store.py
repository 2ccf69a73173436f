"""The neonize gateway against a real whatsmeow store, created by Go, offline.

`prepare_store` creates the ``whatsmeow`` schema in the test's own PostgreSQL database and has
whatsmeow (in neonize's Go library) create its tables there. A fake device row then stands
for a linked phone: resuming it builds a client under neonize's key for that device, an
unknown JID is reported as unlinked (Go would abort the process), and logging out a session
that has no client deletes the row. Clients are scripted: nothing connects to WhatsApp.

The last test does call neonize's real `connect()`, but in a child process inside a network
namespace with no interface (``unshare -n``): nothing can leave the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from infra.whatsapp.devicestore import (
    STORE_SCHEMA,
    device_stored,
    prepare_store,
    store_dsn_from_url,
    upgrade_store,
)
from infra.whatsapp.neonize import NeonizeGateway
from tests.fakes.devices import FAKE_JID, insert_fake_device
from tests.fakes.neonize import Recorder, ScriptedClient

UNKNOWN_JID = "15559999999:3@s.whatsapp.net"
REPO = Path(__file__).resolve().parents[2]


def count(database_url: str, table: str, jid: str) -> int:
    column = "jid" if table == "whatsmeow_device" else "our_jid"
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {STORE_SCHEMA}.{table} WHERE {column} = %s", (jid,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def scripted_gateway(database_url: str) -> tuple[NeonizeGateway, Recorder, list[ScriptedClient]]:
    made: list[ScriptedClient] = []

    def factory(store_dsn: str, **kwargs: Any) -> ScriptedClient:
        made.append(ScriptedClient(store_dsn, **kwargs))
        return made[-1]

    gateway = NeonizeGateway(store_dsn_from_url(database_url), client_factory=factory)
    events = Recorder()
    gateway.bind(events)
    return gateway, events, made


@pytest.mark.postgres
def test_prepare_store_has_go_create_the_whatsmeow_schema(database_url: str) -> None:
    assert prepare_store(database_url) == set()
    with psycopg.connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (STORE_SCHEMA,),
            )
        }
        public = conn.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name LIKE 'whatsmeow%'"
        ).fetchone()
        version = conn.execute(f"SELECT version FROM {STORE_SCHEMA}.whatsmeow_version").fetchone()
    assert {"whatsmeow_device", "whatsmeow_identity_keys", "whatsmeow_sessions"} <= tables
    assert public == (0,)
    assert version is not None and version[0] >= 1
    insert_fake_device(database_url)
    assert prepare_store(database_url) == {FAKE_JID}  # again: idempotent, lists the device


@pytest.mark.postgres
def test_workers_booting_together_prepare_the_store_once(database_url: str) -> None:
    """whatsmeow's upgrade fails when run concurrently on a fresh store (verified: 7 of 8
    fail without the advisory lock); prepare_store serialises it."""
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: prepare_store(database_url), range(6)))
    assert results == [set()] * 6


@pytest.mark.postgres
def test_start_resumes_a_stored_device_and_reports_an_unknown_one(database_url: str) -> None:
    prepare_store(database_url)
    insert_fake_device(database_url)
    gateway, events, made = scripted_gateway(database_url)
    known, unknown = uuid4(), uuid4()

    gateway.start(known, FAKE_JID)
    [client] = made
    assert client.uuid == b"15551234567:12"  # user:device, neonize's key for this device
    assert (client.jid.User, client.jid.Server) == ("15551234567:12", "s.whatsapp.net")
    [call] = events.wait_for(known, lambda calls: len(calls) == 1)
    assert (call.name, call.args[0]) == ("connected", FAKE_JID)

    gateway.start(unknown, UNKNOWN_JID)
    assert gateway.wait_idle()
    [call] = events.of(unknown)
    assert (call.name, call.args[0]) == ("disconnected", "device_unlinked")
    assert len(made) == 1  # no client was built for it
    assert gateway.running() == {known}
    gateway.close()


@pytest.mark.postgres
def test_logout_without_a_client_deletes_the_device_and_its_keys(database_url: str) -> None:
    prepare_store(database_url)
    insert_fake_device(database_url)
    insert_fake_device(database_url, UNKNOWN_JID)
    gateway, events, made = scripted_gateway(database_url)
    sid = uuid4()
    gateway.logout(sid, FAKE_JID)
    assert count(database_url, "whatsmeow_device", FAKE_JID) == 0
    assert count(database_url, "whatsmeow_identity_keys", FAKE_JID) == 0  # cascaded
    assert count(database_url, "whatsmeow_device", UNKNOWN_JID) == 1
    assert not device_stored(gateway.store_dsn, FAKE_JID)
    assert upgrade_store(gateway.store_dsn) == {UNKNOWN_JID}
    gateway.start(sid, FAKE_JID)  # it can never be resumed
    assert gateway.wait_idle()
    assert [c.args[0] for c in events.of(sid)] == ["device_unlinked"]
    assert made == []
    gateway.close()


@pytest.mark.postgres
def test_a_store_that_was_never_prepared_holds_no_device(database_url: str) -> None:
    dsn = store_dsn_from_url(database_url)
    assert not device_stored(dsn, FAKE_JID)  # no schema, no table: not an error


OFFLINE_SCRIPT = """
import sqlite3, sys, threading
from uuid import uuid4
from application.ports import GatewayEvents
from infra.whatsapp.neonize import NeonizeGateway
from infra.whatsapp.devicestore import upgrade_store
from tests.fakes.devices import DEVICE_KEYS, FAKE_JID, INSERT_DEVICE

store = sys.argv[1]
upgrade_store(store)  # whatsmeow's SQLite schema, by Go
with sqlite3.connect(store) as conn:
    conn.execute(
        INSERT_DEVICE.format(table="whatsmeow_device", p="?"), (FAKE_JID, *DEVICE_KEYS)
    )
reports = []
done = threading.Semaphore(0)

class Events(GatewayEvents):
    def qr_issued(self, *args): reports.append(("qr_issued",)); done.release()
    def qr_exhausted(self, *args): reports.append(("qr_exhausted",)); done.release()
    def connected(self, *args): reports.append(("connected",)); done.release()
    def keepalive(self, *args): reports.append(("keepalive",)); done.release()
    def message_received(self, *args): reports.append(("message",)); done.release()
    def message_status(self, *args): reports.append(("receipt",)); done.release()
    def disconnected(self, session_id, ending):
        reports.append((ending.reason, ending.detail)); done.release()

gateway = NeonizeGateway(store)
gateway.bind(Events())
gateway.start(uuid4(), None)  # a new pairing
gateway.start(uuid4(), FAKE_JID)  # a stored device: Go finds it (else it would abort)
for _ in range(2):
    assert done.acquire(timeout=30), reports
gateway.close()
for reason, detail in reports:
    print(reason, "dial" in detail and "unreachable" in detail)
"""


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (a network namespace)")
def test_a_real_connect_without_network_is_whatsapp_unreachable(tmp_path: Path) -> None:
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", OFFLINE_SCRIPT, str(tmp_path / "store.db")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["whatsapp_unreachable True"] * 2, result.stdout
