"""Moving a session linked through the real gateway (neonize): whatsmeow's device store moves
from one deployment's database to the other's, on a machine that cannot reach WhatsApp.

Each deployment's environment names its own HTTPS proxy (pproxy on 127.0.0.1, every tunnel
forwarded to a closed port): whichever deployment dials WhatsApp shows in its own proxy's log.
The source's session is linked to a device written into its whatsmeow store (keys of the
right sizes, none real: no phone can scan offline) and recorded as connected to it, so the
source resumes that device in Go and dials. After the export it never dials again; after the
import, the destination's store (which the import creates: that deployment never ran) holds the
same device (identity keys, Signal sessions, pre-keys, app-state keys: read from both
databases by this test) and the destination, started then, resumes it: it dials WhatsApp,
through its own proxy, and shows no QR code.
"""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from application.sessions import SessionsApplication
from infra.settings import eventsourcing_env
from tests.e2e.conftest import ADMIN, create_session
from tests.e2e.test_proxy_offline import neonize_env, proxies, steady, until
from tests.e2e.test_session_move import (
    PASSPHRASE,
    Deployments,
    cli,
    deployments,
    export,
    second_database_url,
)
from tests.fakes.devices import FAKE_JID, insert_fake_device

__all__ = ["deployments", "proxies", "second_database_url"]  # fixtures used here

#: The device's rows beyond its own and its identity keys: a Signal session, pre-keys, an
#: app-state version with a mutation MAC (a table that refers to another, not to the device),
#: a contact.
MORE_ROWS = (
    "INSERT INTO whatsmeow.whatsmeow_sessions VALUES (%(jid)s, 'peer.0', '\\x0a0b0c'::bytea)",
    "INSERT INTO whatsmeow.whatsmeow_pre_keys VALUES "
    "(%(jid)s, 7, decode(repeat('07', 32), 'hex'), true), "
    "(%(jid)s, 8, decode(repeat('08', 32), 'hex'), false)",
    "INSERT INTO whatsmeow.whatsmeow_app_state_version VALUES "
    "(%(jid)s, 'regular', 3, decode(repeat('03', 128), 'hex'))",
    "INSERT INTO whatsmeow.whatsmeow_app_state_mutation_macs VALUES (%(jid)s, 'regular', 3, "
    "decode(repeat('01', 32), 'hex'), decode(repeat('02', 32), 'hex'))",
    "INSERT INTO whatsmeow.whatsmeow_contacts (our_jid, their_jid, push_name) "
    "VALUES (%(jid)s, '4915112345678@s.whatsapp.net', 'Ann')",
)
#: Every table of a device, by the column that names it.
DEVICE_TABLES = {
    "whatsmeow_device": "jid",
    "whatsmeow_identity_keys": "our_jid",
    "whatsmeow_sessions": "our_jid",
    "whatsmeow_pre_keys": "jid",
    "whatsmeow_app_state_version": "jid",
    "whatsmeow_app_state_mutation_macs": "jid",
    "whatsmeow_contacts": "our_jid",
}


def device_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """The device's rows in every table, as this test reads them (bytes as bytes)."""
    rows = {}
    with psycopg.connect(url, row_factory=dict_row) as conn:
        for table, column in DEVICE_TABLES.items():
            found = conn.execute(
                f"SELECT * FROM whatsmeow.{table} WHERE {column} = %s", (FAKE_JID,)
            ).fetchall()
            rows[table] = sorted(found, key=repr)
    return rows


def store_ready(url: str) -> bool:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('whatsmeow.whatsmeow_version')").fetchone()
    return found is not None and found[0] is not None


@pytest.mark.timeout(300)  # two deployments with the Go library, under load
def test_a_neonize_device_moves_with_its_keys_and_the_destination_dials_without_a_qr_code(
    start: Any, deployments: Deployments, proxies: Any, tmp_path: Any
) -> None:
    proxy_a, proxy_b = proxies("http"), proxies("http")
    source_env = neonize_env(deployments.source, proxy_a)
    target_env = neonize_env(deployments.target, proxy_b)
    source = start("serve", source_env)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE)
    export_file = tmp_path / "neonize.sessiond"

    with source.client() as a:
        created = create_session(a, "Offline phone")
        sid = created["sessionId"]
        # Its worker dials only once its store is prepared (whatsmeow's tables, by Go).
        until(lambda: proxy_a.dials() >= 1, "the source's worker up, its session dialing")
        insert_fake_device(deployments.source_url)
        with psycopg.connect(deployments.source_url, autocommit=True) as conn:
            for statement in MORE_ROWS:
                conn.execute(statement, {"jid": FAKE_JID})
        # The phone "scanned": the session is recorded as connected to the stored device, then
        # its link drops, so the source's worker resumes that device (Go) and dials.
        app = SessionsApplication(env=eventsourcing_env(deployments.source_url))
        try:
            uuid = UUID(hex=sid.removeprefix("sess_"))
            assert until(lambda: app.record_connected(uuid, FAKE_JID, "Fake phone", "test"), "")
            app.record_disconnected(uuid, "connection_lost", "the test dropped it")
        finally:
            app.close()
        dials = proxy_a.dials()
        until(lambda: proxy_a.dials() > dials + 1, "the source resumes the device and dials")
        session = a.get(f"/sessions/{sid}", headers=ADMIN).json()
        assert session["phoneJid"] == FAKE_JID and session["reason"] != "device_unlinked"

        exported = export(
            source_env,
            sid,
            export_file,
            "--passphrase-file",
            str(passphrase),
        )
        assert exported.returncode == 0, exported.stderr
        # The CLI recorded the export itself: the source's status view shows it later.
        until(
            lambda: a.get(f"/sessions/{sid}", headers=ADMIN).json()["reason"] == "exported",
            "the source shows the session exported",
        )
        # Check the source's client is stopped: it dials no more. The export returned once the
        # worker had stopped it; counted from once a dial under way then has reached the proxy
        # (nothing for 2 s), then for 3 s more (a running client retries within 1 s).
        stopped_at = steady(proxy_a.dials, "the source's proxy hears nothing more")
        time.sleep(3)
        assert proxy_a.dials() == stopped_at
        source_rows = device_rows(deployments.source_url)
        assert all(source_rows.values()), source_rows

    # The destination has never run: the import creates its device store (through Go).
    assert not store_ready(deployments.target_url)
    imported = cli(
        target_env,
        "session",
        "import",
        str(export_file),
        "--passphrase-file",
        str(passphrase),
        "--json",
    )
    assert imported.returncode == 0, imported.stderr
    new_id = json.loads(imported.stdout)["sessionId"]

    # Check the destination's store holds the same device: its identity, noise, pre- and
    # ADV keys, its peers' identities, Signal sessions, pre-keys, app-state keys, contacts.
    target_rows = device_rows(deployments.target_url)
    assert target_rows == source_rows
    target = start("serve", target_env)
    key = target_rows["whatsmeow_device"][0]
    assert key["identity_key"] == source_rows["whatsmeow_device"][0]["identity_key"]
    assert len(key["identity_key"]) == 32

    with target.client() as b:
        # Check it resumes that device: it dials WhatsApp through its deployment's proxy, and
        # never shows a QR code (a device missing from the store would be device_unlinked).
        until(lambda: proxy_b.dials() >= 2, "the destination dials WhatsApp")
        session = b.get(f"/sessions/{new_id}", headers=ADMIN).json()
        assert session["phoneJid"] == FAKE_JID
        assert session["reason"] in (None, "whatsapp_unreachable"), session
        events = b.get(f"/sessions/{new_id}/events", headers=ADMIN).json()["items"]
        types = [e["type"] for e in events]
        assert types[0] == "SessionImported" and "QRIssued" not in types, types
        reasons = {e["data"].get("reason") for e in events if e["type"] == "Disconnected"}
        assert "device_unlinked" not in reasons and "qr_expired" not in reasons, reasons
        assert b.get(f"/sessions/{new_id}/qr", headers=ADMIN).status_code == 409
    assert proxy_a.dials() == stopped_at  # the source never dialed again
    for server in (source, target):
        log = server.log()
        assert "panic" not in log and "Traceback" not in log, log
